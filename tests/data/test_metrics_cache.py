"""Real-set statistics cached on disk: keyed by the prepared dataset's content hash, split and extractor; written
atomically as safetensors + JSON; damaged entries recomputed. Uses a cheap stand-in extractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from productgen.config import DataConfig
from productgen.data.dataset import PreparedDataset
from productgen.data.prepare import prepare
from productgen.metrics import FeatureExtractor, StatsCache, cache_key, dataset_statistics, default_cache_dir
from productgen.metrics.cache import CACHE_ENV
from tests.conftest import write_good_folder


def pooled_extractor(calls: list[int], sha: str = "p1") -> FeatureExtractor:
    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)

    return FeatureExtractor("pooled", sha, forward, torch.device("cpu"), dim=48)


N = 60  # more images than the 48 feature dimensions, so features are stored only when asked for


class FakeDataset:
    def __init__(self, content_hash: str, n: int = N, seed: int = 0) -> None:
        self.content_hash = content_hash
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, torch.zeros(len(self.images), dtype=torch.int64)


def test_cache_hit_miss_is_keyed_by_content_hash_split_and_extractor(tmp_path: Path) -> None:
    calls: list[int] = []
    net = pooled_extractor(calls)
    ds = FakeDataset("hash-a")
    first = dataset_statistics(ds, "test", net, cache_dir=tmp_path)
    assert sum(calls) == N
    again = dataset_statistics(ds, "test", net, cache_dir=tmp_path)
    assert sum(calls) == N  # hit: no image went through the network
    np.testing.assert_array_equal(first.mu, again.mu)
    np.testing.assert_array_equal(first.sigma, again.sigma)
    assert again.n == N and again.mu.dtype == again.sigma.dtype == np.float64
    dataset_statistics(FakeDataset("hash-b"), "test", net, cache_dir=tmp_path)  # new data version: miss
    assert sum(calls) == 2 * N
    dataset_statistics(ds, "val", net, cache_dir=tmp_path)  # other split: miss
    assert sum(calls) == 3 * N
    dataset_statistics(ds, "test", pooled_extractor(calls, sha="p2"), cache_dir=tmp_path)  # other weights: miss
    assert sum(calls) == 4 * N
    dataset_statistics(ds, "test", net, cache_dir=tmp_path, cache=False)  # cache off: recomputed, not read
    assert sum(calls) == 5 * N
    assert len(list(tmp_path.glob("*.json"))) == len(list(tmp_path.glob("*.safetensors"))) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_cached_entry_is_safetensors_plus_json_and_features_on_request(tmp_path: Path) -> None:
    calls: list[int] = []
    net = pooled_extractor(calls)
    ds = FakeDataset("hash-f")
    key = cache_key("hash-f", "test", "pooled", "p1")
    dataset_statistics(ds, "test", net, cache_dir=tmp_path)
    meta = json.loads((tmp_path / f"{key}.json").read_text())
    assert meta["content_hash"] == "hash-f" and meta["split"] == "test" and meta["extractor"] == "pooled"
    assert meta["extractor_sha"] == "p1" and meta["n"] == N and meta["dim"] == 48 and not meta["has_features"]
    from safetensors.numpy import load_file

    assert set(load_file(tmp_path / f"{key}.safetensors")) == {"mu", "sigma"}
    with_feats = dataset_statistics(ds, "test", net, cache_dir=tmp_path, keep_features=True)  # KID: recompute
    assert sum(calls) == 2 * N and with_feats.features is not None and with_feats.features.shape == (N, 48)
    hit = dataset_statistics(ds, "test", net, cache_dir=tmp_path, keep_features=True)
    assert sum(calls) == 2 * N
    assert hit.features is not None
    np.testing.assert_array_equal(hit.features, with_feats.features)
    dataset_statistics(ds, "test", net, cache_dir=tmp_path)  # an entry with features also serves FID alone
    assert sum(calls) == 2 * N


def test_damaged_entries_are_recomputed(tmp_path: Path) -> None:
    calls: list[int] = []
    net = pooled_extractor(calls)
    ds = FakeDataset("hash-d")
    key = cache_key("hash-d", "test", "pooled", "p1")
    ref = dataset_statistics(ds, "test", net, cache_dir=tmp_path)
    tensors = tmp_path / f"{key}.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-10])
    again = dataset_statistics(ds, "test", net, cache_dir=tmp_path)
    assert sum(calls) == 2 * N
    np.testing.assert_array_equal(again.mu, ref.mu)
    (tmp_path / f"{key}.json").write_text("{not json")
    dataset_statistics(ds, "test", net, cache_dir=tmp_path)
    assert sum(calls) == 3 * N
    assert StatsCache(tmp_path).load("no-such-key") is None


def test_default_cache_dir_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "productgen" / "fid-stats"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "stats"))
    assert default_cache_dir() == tmp_path / "stats"
    calls: list[int] = []
    dataset_statistics(FakeDataset("hash-e"), "test", pooled_extractor(calls))
    assert len(list((tmp_path / "stats").glob("*.json"))) == 1


def test_prepared_dataset_statistics_follow_its_content_hash(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"bags": 10, "shoes": 10})
    cfg = DataConfig(source="folder", input=str(src), out=str(tmp_path / "prep"), mode="RGB", resolution=32)
    prepare(cfg, show_progress=False)
    ds = PreparedDataset(tmp_path / "prep")
    calls: list[int] = []
    net = pooled_extractor(calls)
    stats = dataset_statistics(ds, "train", net, cache_dir=tmp_path / "cache")
    assert stats.n == ds.counts["train"] == sum(calls)
    key = cache_key(ds.content_hash, "train", "pooled", "p1")
    assert (tmp_path / "cache" / f"{key}.json").is_file()
    # the same data prepared again (same content hash) reuses the entry
    prepare(DataConfig(**{**cfg.__dict__, "out": str(tmp_path / "prep2")}), show_progress=False)
    ds2 = PreparedDataset(tmp_path / "prep2")
    assert ds2.content_hash == ds.content_hash
    dataset_statistics(ds2, "train", net, cache_dir=tmp_path / "cache")
    assert sum(calls) == stats.n
