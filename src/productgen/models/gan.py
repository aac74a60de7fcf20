"""Class-conditional DCGAN-family generator and discriminator, with the stabilisers that work at small scale.

- Generator: class embedding concatenated to z, a linear layer to an ``s0 x s0`` map (s0 = 4..7, so 28 px
  starts at 7 and 32/64/128 px at 4), then upsample + 3x3 conv blocks with class-conditional BatchNorm.
- Discriminator: spectrally normalised strided convs, global sum pooling, and projection conditioning
  (Miyato & Koyama 2018): the logit is ``psi(h) + <embed(y), h>``.
- Losses: hinge (default) or non-saturating; DiffAugment (Zhao et al. 2020) on real and fake alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def plan(resolution: int) -> tuple[int, int]:
    """(s0, n_up): the start size in 4..7 and the number of 2x upsamplings to reach ``resolution``."""
    n = 0
    size = resolution
    while size >= 8 and size % 2 == 0:
        size //= 2
        n += 1
    if not 4 <= size <= 7:
        raise ValueError(f"resolution {resolution} must be s0 * 2^k with s0 in 4..7 (28, 32, 48, 56, 64, 96, 128...)")
    return size, n


def _widths(base: int, n: int, cap: int) -> list[int]:
    """Channel widths from the lowest resolution (index 0) to the highest (index n)."""
    return [min(cap, base * 2 ** (n - i)) for i in range(n + 1)]


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose gain and bias come from the class (a table per class), or, with ``cond_dim``, from a
    conditioning vector: self-modulation (Chen et al. 2019), where the vector is ``[z, embed(y)]``.

    Why self-modulation: with per-class tables only, the noise enters once, at the first linear layer, and a
    class-conditional generator trained briefly draws nearly the same product for every z of a category (the
    quick CPU profile's grid did). Feeding z to every normalisation layer makes the noise matter at every scale.
    """

    def __init__(self, channels: int, num_classes: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.cond_dim = cond_dim
        if cond_dim:
            self.gamma_fc = nn.Linear(cond_dim, channels)
            self.beta_fc = nn.Linear(cond_dim, channels)
            for fc in (self.gamma_fc, self.beta_fc):  # start as plain BatchNorm: gain 1, bias 0
                nn.init.zeros_(fc.weight)
                nn.init.zeros_(fc.bias)
        else:
            self.gamma = nn.Embedding(num_classes, channels)
            self.beta = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gamma.weight)
            nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bn(x)
        if self.cond_dim:
            assert cond is not None
            return h * (1 + self.gamma_fc(cond))[:, :, None, None] + self.beta_fc(cond)[:, :, None, None]
        return h * self.gamma(y)[:, :, None, None] + self.beta(y)[:, :, None, None]


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.norm = ConditionalBatchNorm(cin, num_classes, cond_dim)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = F.relu(self.norm(x, y, cond))
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int,
        z_dim: int = 128,
        base: int = 64,
        cap: int = 512,
        embed_dim: int = 128,
        self_modulation: bool = False,
    ) -> None:
        super().__init__()
        self.resolution, self.channels, self.num_classes, self.z_dim = resolution, channels, num_classes, z_dim
        self.s0, n_up = plan(resolution)
        widths = _widths(base, n_up, cap)
        cond = z_dim + embed_dim if self_modulation else 0
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(z_dim + embed_dim, widths[0] * self.s0 * self.s0)
        self.blocks = nn.ModuleList(GBlock(widths[i], widths[i + 1], num_classes, cond) for i in range(n_up))
        self.out_norm = ConditionalBatchNorm(widths[-1], num_classes, cond)
        self.out = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = torch.cat([z, self.embed(y)], dim=1)
        h = self.fc(c).view(len(z), -1, self.s0, self.s0)
        for block in self.blocks:
            h = block(h, y, c)
        return torch.tanh(self.out(F.relu(self.out_norm(h, y, c))))


class Discriminator(nn.Module):
    def __init__(
        self, resolution: int, channels: int, num_classes: int, base: int = 64, cap: int = 512, use_sn: bool = True
    ) -> None:
        super().__init__()
        sn = spectral_norm if use_sn else (lambda m: m)
        _, n_down = plan(resolution)
        widths = _widths(base, n_down, cap)[::-1]  # highest resolution first
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, widths[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for i in range(n_down):
            layers += [sn(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            layers += [sn(nn.Conv2d(widths[i + 1], widths[i + 1], 3, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.linear = sn(nn.Linear(widths[-1], 1))
        self.embed = sn(nn.Embedding(num_classes, widths[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.features(x).sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def _color(x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
    n = x.shape[0]
    x = x + (rand(n, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean


def _shift(x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
    """DiffAugment's "translation": shift by up to 1/8 of the size, zero-padded."""
    n, _, h, w = x.shape
    dev = x.device
    sx, sy = int(w * 0.125 + 0.5), int(h * 0.125 + 0.5)
    tx = (rand(n) * (2 * sx + 1)).long() - sx
    ty = (rand(n) * (2 * sy + 1)).long() - sy
    gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    iy = (gy[None] + ty[:, None, None] + 1).clamp(0, h + 1)
    ix = (gx[None] + tx[:, None, None] + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    flat = padded.flatten(2)
    idx = (iy * (w + 2) + ix).flatten(1)[:, None, :].expand(-1, x.shape[1], -1)
    return flat.gather(2, idx).view_as(x)


def _cutout(x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
    n, _, h, w = x.shape
    dev = x.device
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    oy = (rand(n) * (h + 1 - ch % 2)).long()
    ox = (rand(n) * (w + 1 - cw % 2)).long()
    gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    top, left = (oy - ch // 2)[:, None, None], (ox - cw // 2)[:, None, None]
    inside = (gy[None] >= top) & (gy[None] < top + ch) & (gx[None] >= left) & (gx[None] < left + cw)
    return x * (~inside)[:, None].to(x.dtype)


# DiffAugment's ops by their policy name (``gan.diffaugment``: comma-separated, applied in that order).
DIFFAUGMENT_OPS: dict[str, Callable[[torch.Tensor, Callable[..., torch.Tensor]], torch.Tensor]] = {
    "color": _color,
    "translation": _shift,
    "cutout": _cutout,
}


def diffaugment(x: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """Differentiable augmentation with randomness drawn from ``generator`` (so resumes are exact)."""
    if not policy:
        return x
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    for op in policy.split(","):
        fn = DIFFAUGMENT_OPS.get(op)
        if fn is not None:  # an unknown name does nothing, as before (params.yaml checks the policy)
            x = fn(x, rand)
    return x


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    return -fake_logits.mean() if kind == "hinge" else F.softplus(-fake_logits).mean()


def load_generator(folder: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The EMA generator of a trained GAN, in eval mode, and its config."""
    from productgen.models.io import load_weights, read_config

    cfg = read_config(folder)
    g = cfg["gan"]
    net = Generator(
        cfg["resolution"],
        cfg["channels"],
        cfg["num_classes"],
        g["z_dim"],
        g["g_channels"],
        g["max_channels"],
        g["embed_dim"],
        g.get("self_modulation", False),
    )
    load_weights(net, folder / "generator.safetensors")
    return net.to(device).eval(), cfg


def load_discriminator(folder: Path, device: str | torch.device = "cpu") -> nn.Module:
    """The discriminator of a trained GAN, in eval mode (for the held-out accuracy metric)."""
    from productgen.models.io import load_weights, read_config

    cfg = read_config(folder)
    g = cfg["gan"]
    net = Discriminator(
        cfg["resolution"], cfg["channels"], cfg["num_classes"], g["d_channels"], g["max_channels"], g["spectral_norm"]
    )
    load_weights(net, folder / "discriminator.safetensors")
    return net.to(device).eval()
