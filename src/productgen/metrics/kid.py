"""Kernel Inception Distance: an unbiased MMD^2 estimate with a cubic polynomial kernel, averaged over subsets.

Unlike FID, KID has an unbiased estimator, so it is comparable across sample sizes and meaningful with a few
hundred images. Defaults follow StyleGAN2-ADA and torch-fidelity: 100 subsets of 1000 images, kernel
``k(x, y) = (x.y / d + 1)^3`` (degree 3, gamma 1/d, coef 1). Subsets are drawn exactly as torch-fidelity draws
them (``numpy.random.RandomState(seed)``, seed 2020, ``choice(..., replace=False)`` for set 1 then set 2 in each
round), so given the same features and seed it averages over the same subsets as torch-fidelity (which does
the sums in the features' float32, so the two agree to float32 precision); when a set has fewer
images than the subset size, the subset size shrinks to the smaller set (StyleGAN2-ADA's rule) instead of
failing. The arithmetic runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from productgen.common.errors import UserError

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_DEGREE = 3
KID_COEF0 = 1.0
KID_SEED = 2020


@dataclass(frozen=True)
class KIDResult:
    """Mean and standard deviation (over subsets, ddof 0 as in torch-fidelity) of the MMD^2 estimates."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(
    x: np.ndarray, y: np.ndarray, degree: int = KID_DEGREE, gamma: float | None = None, coef0: float = KID_COEF0
) -> float:
    """Unbiased MMD^2 between two equally sized samples ``[m, d]`` (diagonals of the within-set kernels dropped)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, d = x.shape
    g = 1.0 / d if gamma is None else gamma
    kxx = polynomial_kernel(x, x, degree, g, coef0)
    kyy = polynomial_kernel(y, y, degree, g, coef0)
    kxy = polynomial_kernel(x, y, degree, g, coef0)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m - 1)
    return float((within - 2.0 * kxy.sum() / m) / m)


def kid_from_features(
    features_a: np.ndarray,
    features_b: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    degree: int = KID_DEGREE,
    gamma: float | None = None,
    coef0: float = KID_COEF0,
    seed: int = KID_SEED,
) -> KIDResult:
    """KID between two feature arrays ``[N, D]``; deterministic for a given ``seed``."""
    a, b = np.asarray(features_a), np.asarray(features_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {a.shape} and {b.shape}")
    m = min(len(a), len(b), subset_size)
    if m < 2:
        raise UserError(f"KID needs at least 2 images in each set (got {len(a)} and {len(b)})")
    if subsets < 1:
        raise UserError(f"KID needs at least one subset (got {subsets})")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets, np.float64)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        mmds[i] = mmd2_unbiased(x, y, degree, gamma, coef0)
    return KIDResult(mean=float(mmds.mean()), std=float(mmds.std()), subsets=subsets, subset_size=m)
