"""The restoration network (a small residual U-Net), the on-the-fly degradations it trains on, and its predictor.

The network predicts a correction that is added to its input, with the last convolution initialised to zero, so
an untrained model is exactly the identity: training starts from the trivial baseline (the degraded image) and
can only be judged by how far it gets above it. Degradations follow :mod:`productgen.data.views` exactly, except
that noise is drawn from the training engine's generator (so every step sees new noise and resume stays exact)
instead of the per-image seeded generators of the fixed test views.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from productgen.common.errors import UserError
from productgen.common.images import to_uint8
from productgen.config import ViewsConfig
from productgen.data import views

VIEWS_HELP = "noise<sigma> (noise15, noise25, noise50), blur, jpeg, sr2, sr4"


def parse_view(view: str, where: str = "restore.view") -> tuple[str, float]:
    """``noise25`` -> ("noise", 25.0), ``sr2`` -> ("sr", 2), ``blur`` / ``jpeg`` -> (kind, 0); else UserError."""
    m = re.fullmatch(r"noise(\d+(?:\.\d+)?)", view)
    if m and float(m.group(1)) > 0:
        return "noise", float(m.group(1))
    m = re.fullmatch(r"sr(\d+)", view)
    if m and int(m.group(1)) >= 2:
        return "sr", int(m.group(1))
    if view in ("blur", "jpeg"):
        return view, 0.0
    raise UserError(f"{where}: unknown degradation {view!r}; choose from {VIEWS_HELP}")


def view_scale(view: str) -> int:
    """Output size / input size of a model undoing ``view``: k for ``sr<k>``, else 1."""
    kind, arg = parse_view(view)
    return int(arg) if kind == "sr" else 1


def degrade(clean: torch.Tensor, view: str, cfg: ViewsConfig, generator: torch.Generator) -> torch.Tensor:
    """The ``view`` degradation of a uint8 ``[N, C, H, W]`` batch, as uint8 on the same device.

    Noise comes from ``generator`` (the engine's: fresh noise every step, reproducible from the checkpointed
    state); everything else is deterministic and identical to :func:`productgen.data.views.make_view`.
    """
    kind, arg = parse_view(view)
    if kind == "noise":
        noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=torch.float32)
        return (clean.float() + arg * noise).round().clamp_(0, 255).to(torch.uint8)
    if kind == "blur":
        return views.gaussian_blur(clean, cfg.blur_sigma)
    if kind == "jpeg":
        return views.jpeg(clean, cfg.jpeg_quality)
    return views.bicubic_up(views.downscale(clean, int(arg)), tuple(clean.shape[-2:]))  # type: ignore[arg-type]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    groups = max(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Pre-activation residual block: norm -> SiLU -> conv, twice, plus a (1x1 if needed) skip."""

    def __init__(self, cin: int, cout: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(norm, cin),
            nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1),
            _norm(norm, cout),
            nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class UNet(nn.Module):
    """Residual U-Net: ``forward(x) = x + correction(x)`` for images in [-1, 1] of any size.

    Inputs whose sides are not multiples of ``2**levels`` are replicate-padded inside and cropped back, so the
    network trains on 28 px images with three levels too; callers (``apply.run_batch``) pad to ``multiple`` with
    reflection anyway, which is kinder to the borders.
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        max_channels: int = 128,
        levels: int = 2,
        blocks: int = 1,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if levels < 1 or blocks < 1 or width < 1:
            raise UserError("restore: levels, blocks and channels must be at least 1")
        self.levels = levels
        ch = [min(width * 2**i, max_channels) for i in range(levels + 1)]
        self.stem = nn.Conv2d(channels, ch[0], 3, padding=1)
        self.enc = nn.ModuleList(
            nn.Sequential(*[ResBlock(ch[i], ch[i], norm) for _ in range(blocks)]) for i in range(levels)
        )
        self.down = nn.ModuleList(nn.Conv2d(ch[i], ch[i + 1], 3, stride=2, padding=1) for i in range(levels))
        self.mid = nn.Sequential(*[ResBlock(ch[levels], ch[levels], norm) for _ in range(blocks)])
        self.up = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i], 3, padding=1) for i in range(levels))
        self.dec = nn.ModuleList(
            nn.Sequential(ResBlock(2 * ch[i], ch[i], norm), *[ResBlock(ch[i], ch[i], norm) for _ in range(blocks - 1)])
            for i in range(levels)
        )
        self.head = nn.Sequential(_norm(norm, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)  # starts as the identity: output = input
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.levels
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        f = self.stem(xp)
        skips = []
        for enc, down in zip(self.enc, self.down, strict=True):
            f = enc(f)
            skips.append(f)
            f = down(f)
        f = self.mid(f)
        for i in reversed(range(self.levels)):
            f = self.up[i](F.interpolate(f, scale_factor=2.0, mode="nearest"))
            f = self.dec[i](torch.cat([f, skips[i]], dim=1))
        return x + self.head(f)[..., :h, :w]


def build_unet(channels: int, cfg: dict[str, Any]) -> UNet:
    """The network described by a ``restore`` config section (a dict, as stored in config.json)."""
    return UNet(channels, cfg["channels"], cfg["max_channels"], cfg["levels"], cfg["blocks"], cfg["norm"])


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


class ImagePredictor:
    """Wraps an image -> image network in the :class:`~productgen.models.predict.Predictor` interface.

    ``restore(view)`` maps an already-degraded uint8 image of the output size to its restoration (what training
    and the evaluation use); ``__call__`` takes what a user has: for ``sr<k>`` models a low-resolution image,
    which is bicubic-upscaled by k first (exactly as the training views were made), else the image as is.
    """

    def __init__(
        self, net: nn.Module, config: dict[str, Any], view: str, levels: int, device: str | torch.device
    ) -> None:
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.config = config
        self.view = view
        self.channels = int(config["channels"])
        self.scale = view_scale(view)
        self.multiple = 2**levels

    @torch.inference_mode()
    def restore(self, degraded: torch.Tensor) -> torch.Tensor:
        return to_uint8(self.net(to_unit(degraded.to(self.device)))).cpu()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, **options: Any) -> torch.Tensor:
        if options:
            raise UserError(f"{self.config.get('model')} models take no options (got {', '.join(options)})")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected uint8 [N, {self.channels}, H, W], got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.device)
        if self.scale > 1:
            h, w = x.shape[-2:]
            x = views.bicubic_up(x.float(), (h * self.scale, w * self.scale))
        return self.restore(x)


def load_predictor(folder: Path, device: str | torch.device = "cpu") -> ImagePredictor:
    """The exported (EMA) restoration network of a ``restore`` model folder, ready to apply."""
    from productgen.models.io import load_weights, read_model_config

    cfg, _ = read_model_config(folder, f"{__name__}:load_predictor", "a restore model")
    try:
        net = build_unet(int(cfg["channels"]), cfg["restore"])
        view = str(cfg["view"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{folder / 'config.json'}: incomplete restore config ({err}); re-export the model") from None
    parse_view(view, f"{folder / 'config.json'}: view")
    load_weights(net, folder / "restore.safetensors")
    return ImagePredictor(net, cfg, view, int(cfg["restore"]["levels"]), device)
