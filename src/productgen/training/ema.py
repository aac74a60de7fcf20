"""Exponential moving average of a model's weights: the EMA generator samples better than the raw one."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``shadow``, a frozen copy of ``model`` whose parameters trail the live ones by ``decay``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        live = dict(model.named_parameters())
        named = list(self.shadow.named_parameters())
        if named:  # one fused multi-tensor kernel instead of one launch per parameter (same arithmetic)
            torch._foreach_lerp_([p for _, p in named], [live[n].detach() for n, _ in named], 1.0 - d)
        live_buffers = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(live_buffers[name])
