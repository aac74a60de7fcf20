"""The module-level API: features, statistics, FID and KID of image folders, uint8 tensors or prepared datasets.

    >>> from productgen.metrics import load_extractor, dataset_statistics, compute_statistics, fid_from_stats
    >>> net = load_extractor()                                   # tf-inception on CUDA if available
    >>> real = dataset_statistics(PreparedDataset("artifacts/prepared"), "test", net)   # cached on disk
    >>> fake = compute_statistics(batches_of_uint8_images, net)  # any iterable of uint8 [n, C, H, W]
    >>> fid_from_stats(real, fake)

Every function that takes an ``extractor`` also accepts a registered name (or None for ``tf-inception``) and
then loads it, which costs a few seconds: pass a loaded one when calling repeatedly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from productgen.common.errors import UserError
from productgen.metrics.cache import StatsCache, cache_key
from productgen.metrics.extractors import DEFAULT_EXTRACTOR, FeatureExtractor, load_extractor
from productgen.metrics.frechet import FeatureStats, fid_from_stats
from productgen.metrics.images import ImageSource, count_images, iter_batches
from productgen.metrics.kid import KID_SEED, KID_SUBSET_SIZE, KID_SUBSETS, KIDResult, kid_from_features

DEFAULT_BATCH_SIZE = 50
ExtractorArg = FeatureExtractor | str | None
StatsOrImages = FeatureStats | ImageSource


class SplitDataset(Protocol):
    """What the stats cache needs of a dataset: :class:`productgen.data.dataset.PreparedDataset` fits."""

    @property
    def content_hash(self) -> str: ...

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]: ...


def get_extractor(extractor: ExtractorArg = None, device: str | torch.device | None = "auto") -> FeatureExtractor:
    """``extractor`` itself if already loaded, else load it by name (None: the default, tf-inception)."""
    if isinstance(extractor, FeatureExtractor):
        return extractor
    return load_extractor(extractor or DEFAULT_EXTRACTOR, device)


def compute_features(
    images: ImageSource,
    extractor: ExtractorArg = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = "auto",
    show_progress: bool = False,
) -> np.ndarray:
    """Features ``[N, dim]`` float32 of every image in ``images`` (folder, uint8 tensor, or iterable of them)."""
    net = get_extractor(extractor, device)
    bar = _bar(count_images(images), net.name) if show_progress else None
    parts = []
    for batch in iter_batches(images, batch_size):
        parts.append(net(batch).numpy())
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if not parts or sum(len(p) for p in parts) == 0:
        raise UserError("no images to compute features of")
    return np.concatenate(parts)


def compute_statistics(
    images: ImageSource,
    extractor: ExtractorArg = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = "auto",
    keep_features: bool = False,
    show_progress: bool = False,
) -> FeatureStats:
    """Mean and covariance (float64) of the features of ``images``; ``keep_features`` keeps them for KID."""
    feats = compute_features(images, extractor, batch_size=batch_size, device=device, show_progress=show_progress)
    return FeatureStats.from_features(feats, keep_features=keep_features)


def dataset_statistics(
    dataset: SplitDataset,
    split: str = "test",
    extractor: ExtractorArg = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = "auto",
    keep_features: bool = False,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    show_progress: bool = False,
) -> FeatureStats:
    """Statistics of one split of a prepared dataset, from the on-disk cache when there (see ``cache.py``).

    The cache key is the dataset's content hash, the split and the extractor's name and weights digest; an
    entry without features does not satisfy ``keep_features=True`` and is recomputed with them.
    """
    net = get_extractor(extractor, device)
    store = StatsCache(cache_dir)
    key = cache_key(dataset.content_hash, split, net.name, net.sha)
    if cache:
        hit = store.load(key, need_features=keep_features)
        if hit is not None:
            return hit
    images, _ = dataset.tensors(split)
    if len(images) == 0:
        raise UserError(f"split {split!r} of the dataset holds no images")
    stats = compute_statistics(
        images, net, batch_size=batch_size, keep_features=keep_features, show_progress=show_progress
    )
    if cache:
        meta = {"content_hash": dataset.content_hash, "split": split, "extractor": net.name, "extractor_sha": net.sha}
        store.save(key, stats, meta)
    return stats


@dataclass(frozen=True)
class Comparison:
    """FID (and KID when asked) between two image sets, with what produced them."""

    fid: float
    n_a: int
    n_b: int
    extractor: str
    extractor_sha: str
    kid: KIDResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fid": self.fid}
        if self.kid is not None:
            out |= {
                "kid_mean": self.kid.mean,
                "kid_std": self.kid.std,
                "kid_subsets": self.kid.subsets,
                "kid_subset_size": self.kid.subset_size,
            }
        return out | {
            "n_a": self.n_a,
            "n_b": self.n_b,
            "extractor": self.extractor,
            "extractor_sha": self.extractor_sha,
        }


def _stats(x: StatsOrImages, net: FeatureExtractor, batch_size: int, keep: bool, show: bool) -> FeatureStats:
    if isinstance(x, FeatureStats):
        if keep and x.features is None:
            raise UserError("KID needs the features, not only mu and sigma: compute the statistics with keep_features")
        return x
    return compute_statistics(x, net, batch_size=batch_size, keep_features=keep, show_progress=show)


def compare(
    a: StatsOrImages,
    b: StatsOrImages,
    *,
    kid: bool = False,
    extractor: ExtractorArg = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = "auto",
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_seed: int = KID_SEED,
    show_progress: bool = False,
) -> Comparison:
    """FID, and KID when ``kid``, between ``a`` and ``b`` (image sources or precomputed :class:`FeatureStats`).

    Precomputed statistics must come from the same extractor as ``extractor`` (the caller's responsibility;
    the dimensions are checked).
    """
    net = get_extractor(extractor, device)
    sa = _stats(a, net, batch_size, kid, show_progress)
    sb = _stats(b, net, batch_size, kid, show_progress)
    k = None
    if kid:
        assert sa.features is not None and sb.features is not None
        k = kid_from_features(sa.features, sb.features, kid_subsets, kid_subset_size, seed=kid_seed)
    return Comparison(fid_from_stats(sa, sb), sa.n, sb.n, net.name, net.sha, k)


def fid_between(a: StatsOrImages, b: StatsOrImages, **kwargs: Any) -> float:
    """FID between two image sets (folders, uint8 tensors, iterables of batches, or :class:`FeatureStats`)."""
    return compare(a, b, **kwargs).fid


def kid_between(a: StatsOrImages, b: StatsOrImages, **kwargs: Any) -> KIDResult:
    """KID (mean and std over subsets) between two image sets; see :func:`compare` for the options."""
    result = compare(a, b, kid=True, **kwargs).kid
    assert result is not None
    return result


def _bar(total: int | None, name: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"features ({name})", unit="img", mininterval=0.5, disable=None)


__all__ = [
    "Comparison",
    "SplitDataset",
    "compare",
    "compute_features",
    "compute_statistics",
    "dataset_statistics",
    "fid_between",
    "get_extractor",
    "kid_between",
]
