"""The one float -> uint8 conversion (``productgen.common.images.to_uint8``): round half to even, clamped."""

from __future__ import annotations

import torch

from productgen.common.images import to_uint8


def test_ties_round_to_even_and_the_ends_clamp() -> None:
    x = torch.tensor([-3.0, -0.5, 0.0, 0.49, 0.5, 1.5, 2.5, 3.5, 126.5, 127.5, 254.5, 255.0, 255.5, 300.0])
    assert to_uint8(x, low=0.0, high=255.0).tolist() == [0, 0, 0, 0, 0, 2, 2, 4, 126, 128, 254, 255, 255, 255]


def test_generator_range_and_unit_range() -> None:
    x = torch.tensor([-2.0, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 128, 191, 255, 255, 255]  # [-1, 1]: (x + 1) * 127.5; 127.5 -> 128
    u = torch.tensor([-0.1, 0.0, 0.5, 1.0 / 255, 0.999, 1.0, 1.1])
    assert to_uint8(u, low=0.0).tolist() == [0, 0, 128, 1, 255, 255, 255]  # [0, 1]: x * 255


def test_equals_torch_round_of_the_scaled_values() -> None:
    """Bit for bit what the callers computed before the copies were merged: ``round((x + 1) * 127.5)`` and
    ``round(x * 255)``, clamped; a float64 or half input is computed in float32; the device and shape stay."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 9, 7, generator=g) * 2.4 - 1.2
    assert torch.equal(to_uint8(x), x.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8))
    u = torch.rand(2, 1, 5, 5, generator=g, dtype=torch.float64)
    assert torch.equal(to_uint8(u, low=0.0), u.float().mul(255.0).round().clamp(0, 255).to(torch.uint8))
    out = to_uint8(x.half())
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device


def test_gradients_are_not_tracked() -> None:
    x = torch.zeros(2, requires_grad=True)
    assert not to_uint8(x).requires_grad
