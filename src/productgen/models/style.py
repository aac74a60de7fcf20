"""Fast per-style transfer (Johnson, Alahi & Fei-Fei 2016): one feed-forward network per style.

The TransformerNet is the one of pytorch/examples ``fast_neural_style`` (reflection-padded convolutions,
instance norm, five residual blocks, nearest-upsample + convolution instead of transposed convolutions, which
avoids checkerboard artefacts), with two changes: the width and depth are settings (``style.channels``,
``style.residual_blocks``), and the output is squashed into [0, 1] with a scaled tanh, so an untrained or
overshooting network never produces out-of-range pixels. Reflection padding is the convolutions' own
``padding_mode`` (one op instead of a pad plus a conv; same numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from productgen.common.errors import UserError


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, padding_mode="reflect")


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.in1 = _conv(c, c, 3), nn.InstanceNorm2d(c, affine=True)
        self.conv2, self.in2 = _conv(c, c, 3), nn.InstanceNorm2d(c, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(self.relu(self.in1(self.conv1(x)))))


class _UpConv(nn.Module):
    """Nearest-neighbour 2x upsample, then a convolution (no checkerboard artefacts)."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = _conv(c_in, c_out, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


class TransformerNet(nn.Module):
    """RGB [0, 1] ``[N, 3, H, W]`` -> stylised RGB [0, 1]; H and W multiples of 4."""

    def __init__(self, channels: int = 32, residual_blocks: int = 5) -> None:
        super().__init__()
        c = channels
        self.down = nn.Sequential(
            _conv(3, c, 9),
            nn.InstanceNorm2d(c, affine=True),
            nn.ReLU(),
            _conv(c, 2 * c, 3, 2),
            nn.InstanceNorm2d(2 * c, affine=True),
            nn.ReLU(),
            _conv(2 * c, 4 * c, 3, 2),
            nn.InstanceNorm2d(4 * c, affine=True),
            nn.ReLU(),
        )
        self.res = nn.Sequential(*[_Residual(4 * c) for _ in range(residual_blocks)])
        self.up = nn.Sequential(
            _UpConv(4 * c, 2 * c, 3),
            nn.InstanceNorm2d(2 * c, affine=True),
            nn.ReLU(),
            _UpConv(2 * c, c, 3),
            nn.InstanceNorm2d(c, affine=True),
            nn.ReLU(),
            _conv(c, 3, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.res(self.down(x * 2.0 - 1.0)))
        return torch.tanh(y.float()).add(1.0).mul(0.5)


def inference_recipe(module: nn.Module, device: torch.device) -> tuple[nn.Module, torch.dtype | None]:
    """How our predictors run a network: channels_last and bf16 autocast on CUDA (fp16 where bf16 is missing)."""
    if device.type != "cuda":
        return module, None
    module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class StylePredictor:
    """A trained TransformerNet behind the :class:`~productgen.models.predict.Predictor` interface.

    Options: ``preserve_product`` (bool; default: as trained) keeps the white background of catalog photos.
    """

    channels = 3
    multiple = 4
    scale = 1

    def __init__(self, net: TransformerNet, config: dict[str, Any], device: torch.device) -> None:
        self.net, self.dtype = inference_recipe(net.to(device).eval(), device)
        self.config, self.device = config, device
        self.style_cfg: dict[str, Any] = config.get("style", {})

    def __call__(self, images: torch.Tensor, **options: Any) -> torch.Tensor:
        from productgen.common.images import to_uint8
        from productgen.models.styles import composite, product_mask, to_float

        unknown = set(options) - {"preserve_product"}
        if unknown:
            raise UserError(f"the per-style model takes no option {sorted(unknown)[0]!r} (its style is built in)")
        preserve = options.get("preserve_product")
        preserve = bool(self.style_cfg.get("preserve_product", False)) if preserve is None else bool(preserve)
        x = to_float(images.to(self.device))
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, enabled=self.dtype is not None):
            y = self.net(x).float()
        if preserve:
            c = self.style_cfg
            y = composite(
                y, product_mask(x, c.get("mask_threshold", 0.94), c.get("mask_dilate", 1), c.get("mask_feather", 1.0))
            )
        return to_uint8(y, low=0.0).cpu()


def build_transformer(config: dict[str, Any]) -> TransformerNet:
    c = config["style"]
    return TransformerNet(int(c["channels"]), int(c["residual_blocks"]))


def load_predictor(folder: Path, device: str | torch.device = "cpu") -> StylePredictor:
    """The per-style network saved by ``productgen train style`` (``transformer.safetensors`` + config.json)."""
    from productgen.models.io import load_weights, read_model_config

    config, _ = read_model_config(folder, f"{__name__}:load_predictor", "a per-style network")
    net = load_weights(build_transformer(config), folder / "transformer.safetensors")
    return StylePredictor(net, config, torch.device(device))
