"""The generation evaluator's within-category diversity: it must see mode collapse that FID on few images hides."""

from __future__ import annotations

import numpy as np

from productgen.evaluation.generation import diversity


def test_diversity_is_one_for_real_like_samples_and_zero_for_a_collapsed_generator() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 64))
    assert abs(diversity(real, rng.normal(size=(200, 64))) - 1.0) < 0.05  # type: ignore[operator]
    collapsed = np.repeat(real[:1], 200, axis=0) + 1e-3 * rng.normal(size=(200, 64))
    assert diversity(real, collapsed) < 0.01  # type: ignore[operator]
    half = real[:100] * 0.5
    assert abs(diversity(real[:100], half) - 0.5) < 1e-9  # type: ignore[operator]
    assert diversity(real[:1], real) is None and diversity(real, real[:1]) is None
