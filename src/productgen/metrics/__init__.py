"""Evaluation metrics for image generation: FID and KID with the TF-Inception network of published FIDs.

Core module: imports only torch, numpy, scipy, pillow and safetensors (tqdm for progress bars when present), so
it runs on a bare GPU machine. ``frechet`` and ``kid`` hold the arithmetic (float64), ``extractors`` the feature
networks and their registry, ``images`` the inputs, ``cache`` the on-disk real-set statistics, ``api`` the
functions below. Command line: ``productgen metrics fid DIR_A DIR_B``.
"""

from __future__ import annotations

from productgen.common.images import list_images, to_uint8
from productgen.metrics.api import (
    Comparison,
    compare,
    compute_features,
    compute_statistics,
    dataset_statistics,
    fid_between,
    get_extractor,
    kid_between,
)
from productgen.metrics.cache import StatsCache, cache_key, default_cache_dir
from productgen.metrics.extractors import (
    DEFAULT_EXTRACTOR,
    FeatureExtractor,
    available_extractors,
    load_extractor,
    register_extractor,
    resolve_device,
    strict_fp32,
)
from productgen.metrics.frechet import FeatureStats, fid_from_features, fid_from_stats, frechet_distance
from productgen.metrics.kid import KIDResult, kid_from_features, mmd2_unbiased

__all__ = [
    "DEFAULT_EXTRACTOR",
    "Comparison",
    "FeatureExtractor",
    "FeatureStats",
    "KIDResult",
    "StatsCache",
    "available_extractors",
    "cache_key",
    "compare",
    "compute_features",
    "compute_statistics",
    "dataset_statistics",
    "default_cache_dir",
    "fid_between",
    "fid_from_features",
    "fid_from_stats",
    "frechet_distance",
    "get_extractor",
    "kid_between",
    "kid_from_features",
    "list_images",
    "load_extractor",
    "mmd2_unbiased",
    "register_extractor",
    "resolve_device",
    "strict_fp32",
    "to_uint8",
]
