"""``productgen metrics fid``: one-line errors for bad input, text and JSON output, prepared datasets as inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from productgen.cli import app
from productgen.metrics import extractors as ex
from tests.conftest import product_image, run_cli

needs_tf_inception = pytest.mark.skipif(
    ex.installed_tf_inception() is None and not os.environ.get(ex.TF_INCEPTION_ENV),
    reason=f"TF-Inception FID network not installed: {ex.TF_INCEPTION_INSTALL} (make setup does it)",
)


def _folder(root: Path, n: int, offset: int = 0, size: tuple[int, int] = (24, 24)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        product_image(offset + i, size).save(root / f"{i}.png")
    return root


@pytest.fixture
def pooled() -> Iterator[list[int]]:
    """Register a cheap stand-in extractor named 'test-pooled' for in-process CLI runs; yields its call log."""
    calls: list[int] = []

    def load(device: torch.device, weights: Path | None) -> ex.FeatureExtractor:
        def forward(x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)

        return ex.FeatureExtractor("test-pooled", "t1", forward, device, dim=48)

    ex.register_extractor("test-pooled", "tests")(load)
    yield calls
    ex._REGISTRY.pop("test-pooled")


def _invoke(*args: str, stdout_only: bool = False) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["metrics", "fid", *args])
    return result.exit_code, result.stdout if stdout_only else result.output


def test_bad_input_is_a_one_line_error_before_any_network_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the network must not load for bad input")

    monkeypatch.setattr(ex, "load_extractor", no_load)
    monkeypatch.setattr("productgen.metrics.load_extractor", no_load)
    good = _folder(tmp_path / "good", 3)
    (tmp_path / "empty").mkdir()
    one = _folder(tmp_path / "one", 1)
    cases = {
        (str(tmp_path / "missing"), str(good)): "missing: no such folder",
        (str(good), str(tmp_path / "empty")): "empty: no images found",
        (str(good), str(one)): "one: 1 image(s); FID needs at least 2",
        (str(good), str(good / "0.png")): "not a folder",
    }
    for args, message in cases.items():
        code, out = _invoke(*args)
        assert code == 2, out
        assert out.startswith("error: ") and message in out and out.count("\n") == 1, out


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    good = _folder(tmp_path / "good", 3)
    code, out = _invoke(str(good), str(good), "--extractor", "nope")
    assert code == 2 and "unknown feature extractor 'nope'" in out
    code, out = _invoke(str(good), str(good), "--device", "gpu0")
    assert code == 2 and "unknown device" in out
    if not torch.cuda.is_available():
        code, out = _invoke(str(good), str(good), "--device", "cuda")
        assert code == 2 and "CUDA is not available" in out


def test_text_and_json_output(tmp_path: Path, pooled: list[int]) -> None:
    a, b = _folder(tmp_path / "a", 6), _folder(tmp_path / "b", 5, offset=40)
    code, out = _invoke(str(a), str(b), "--extractor", "test-pooled", "--kid", "-b", "4")
    assert code == 0, out
    lines = out.splitlines()
    fid_line = next(line for line in lines if line.startswith("FID: "))
    assert float(fid_line.split()[1]) > 0
    assert any(line.startswith("KID: ") and "(100 subsets of 5)" in line for line in lines)
    assert "biased upward" in out  # the small-set note (stderr)
    assert max(pooled) <= 4
    code, out = _invoke(str(a), str(a), "--extractor", "test-pooled", "--json", "--quiet")
    assert code == 0, out
    res = json.loads(out)
    assert abs(res["fid"]) < 1e-9 and res["n_a"] == res["n_b"] == 6 and res["extractor"] == "test-pooled"
    assert "kid_mean" not in res and res["device"] in ("cpu", "cuda")


def test_prepared_dataset_argument_uses_its_split_and_the_cache(tmp_path: Path, pooled: list[int]) -> None:
    from productgen.config import DataConfig
    from productgen.data.prepare import prepare
    from tests.conftest import write_good_folder

    write_good_folder(tmp_path / "shop", {"bags": 10, "shoes": 10})
    cfg = DataConfig(
        source="folder", input=str(tmp_path / "shop"), out=str(tmp_path / "prep"), mode="RGB", resolution=32
    )
    n_train = prepare(cfg, show_progress=False).counts["train"]  # the content-hash split: about 16 of 20
    gen = _folder(tmp_path / "gen", 4)
    args = [
        str(tmp_path / "prep"),
        str(gen),
        "--extractor",
        "test-pooled",
        "--split",
        "train",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--json",
        "--kid",
    ]
    code, out = _invoke(*args, stdout_only=True)
    assert code == 0, out
    res = json.loads(out)
    assert res["n_a"] == n_train and res["a"].endswith("(train split)") and res["kid_subset_size"] == 4
    seen = sum(pooled)
    assert seen == n_train + 4
    code, out2 = _invoke(*args, stdout_only=True)
    assert json.loads(out2)["fid"] == res["fid"]
    assert sum(pooled) == seen + 4  # the dataset's statistics came from the cache
    code, out = _invoke(*args[:-2], "--split", "nope")
    assert code == 2 and "unknown split 'nope'" in out


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys; import productgen.cli.metrics; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@needs_tf_inception
def test_fid_command_end_to_end_with_the_tf_inception_network(tmp_path: Path) -> None:
    a, b = _folder(tmp_path / "a", 4), _folder(tmp_path / "b", 4, offset=20, size=(20, 28))
    p = run_cli("metrics", "fid", str(a), str(b), "--kid", "--json", "--device", "cpu", "--batch-size", "3")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["extractor"] == "tf-inception" and res["extractor_sha"] == ex.TF_INCEPTION_SHA1
    assert res["fid"] > 1.0 and res["n_a"] == res["n_b"] == 4 and res["device"] == "cpu"
    assert res["kid_subset_size"] == 4 and res["kid_std"] >= 0
