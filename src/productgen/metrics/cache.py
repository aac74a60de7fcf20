"""On-disk cache of real-set feature statistics: computed once per dataset version and extractor, then reused.

The reference statistics of a real set cost ~2 GPU-minutes at 50k images (hours on a CPU) and never change
while the data does not, so they are keyed by what determines them: the prepared dataset's content hash, the
split, the extractor's name and the digest of its weights, and this module's format/preprocessing version.
Each entry is ``<key>.safetensors`` (mu and sigma in float64, optionally the float32 features KID needs) next
to ``<key>.json`` (what the key stands for, sizes, the sha256 of the tensors file). Both are written atomically
and the JSON last, so a reader never sees a half-written entry; a damaged or mismatching entry is a miss and
gets recomputed. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from productgen.common import atomic
from productgen.metrics.frechet import FeatureStats

CACHE_ENV = "PRODUCTGEN_FID_STATS_DIR"
DEFAULT_CACHE_DIR = "~/.cache/productgen/fid-stats"
# Bump when anything that changes the features or the file layout changes (preprocessing, resize, dtype).
STATS_FORMAT = 1


def default_cache_dir() -> Path:
    """``$PRODUCTGEN_FID_STATS_DIR`` if set, else ``~/.cache/productgen/fid-stats``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def cache_key(content_hash: str, split: str, extractor: str, extractor_sha: str) -> str:
    """A file-name-safe key for one (dataset version, split, extractor, weights) combination."""
    ident = json.dumps([STATS_FORMAT, content_hash, split, extractor, extractor_sha])
    return f"{extractor}-{split}-{hashlib.sha256(ident.encode()).hexdigest()[:24]}"


class StatsCache:
    """A folder of cached :class:`FeatureStats`, by key (see :func:`cache_key`)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def load(self, key: str, need_features: bool = False) -> FeatureStats | None:
        """The cached statistics, or None when absent, damaged, or lacking features that are needed."""
        from safetensors import SafetensorError
        from safetensors.numpy import load as load_bytes

        tensors_path, meta_path = self.paths(key)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != STATS_FORMAT or meta.get("key") != key:
                return None
            if need_features and not meta.get("has_features"):
                return None
            data = tensors_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                return None
            arrays = load_bytes(data)
        except (OSError, ValueError, SafetensorError):
            return None
        mu, sigma = arrays.get("mu"), arrays.get("sigma")
        n, dim = meta.get("n"), meta.get("dim")
        if mu is None or sigma is None or mu.shape != (dim,) or sigma.shape != (dim, dim):
            return None
        features = arrays.get("features") if need_features else None
        if need_features and (features is None or features.shape != (n, dim)):
            return None
        return FeatureStats(mu=mu, sigma=sigma, n=int(n), features=features)

    def save(self, key: str, stats: FeatureStats, meta: dict[str, Any] | None = None) -> Path:
        """Write ``stats`` (features included when present) under ``key``; returns the JSON path."""
        from safetensors.numpy import save

        arrays = {
            "mu": np.ascontiguousarray(stats.mu, np.float64),
            "sigma": np.ascontiguousarray(stats.sigma, np.float64),
        }
        if stats.features is not None:
            arrays["features"] = np.ascontiguousarray(stats.features, np.float32)
        data = save(arrays)
        tensors_path, meta_path = self.paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = tensors_path.with_name(f".{tensors_path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, tensors_path)
        record = {
            "format": STATS_FORMAT,
            "key": key,
            **(meta or {}),
            "n": stats.n,
            "dim": stats.dim,
            "has_features": stats.features is not None,
            "tensors": tensors_path.name,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        return atomic.write_json(meta_path, record)
