"""Arbitrary style transfer with adaptive instance normalisation (Huang & Belongie 2017).

A frozen encoder maps the content and the style image to feature maps; AdaIN gives the content features the
style's per-channel mean and standard deviation; a trained decoder turns the result back into an image. One
model handles any style image, chosen at inference time, and ``alpha`` blends between the content's own
features (0) and the fully stylised ones (1).

The model folder is self-contained: the encoder's weights are saved next to the decoder's
(``encoder.safetensors``), so inference needs neither the network nor the encoder's original weights file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from productgen.common.errors import UserError


class Decoder(nn.Module):
    """Mirror of the encoder up to the AdaIN level: (nearest upsample, two 3x3 convs + ReLU) per 2x step.

    No normalisation layers (they would wash out the statistics AdaIN just set), reflection padding against
    border artefacts, and a scaled tanh so the output lies in [0, 1].
    """

    def __init__(self, in_channels: int, stride: int, channels: int = 32) -> None:
        super().__init__()
        steps = int(round(math.log2(stride)))
        if 2**steps != stride:
            raise ValueError(f"encoder stride {stride} is not a power of two")
        width = channels * 2 ** max(0, steps - 1)
        layers: list[nn.Module] = [self._conv(in_channels, width), nn.ReLU()]
        for i in range(steps):
            out = max(channels, width // 2) if i < steps - 1 else channels
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                self._conv(width, out),
                nn.ReLU(),
                self._conv(out, out),
                nn.ReLU(),
            ]
            width = out
        layers.append(self._conv(width, 3))
        self.net = nn.Sequential(*layers)

    @staticmethod
    def _conv(c_in: int, c_out: int) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="reflect")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(t).float()).add(1.0).mul(0.5)


def stylise(
    encoder: nn.Module,
    decoder: nn.Module,
    content: torch.Tensor,
    style_feat: torch.Tensor,
    level: int,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded image and the AdaIN target ``t`` for RGB [0, 1] ``content`` and the style's level features."""
    from productgen.models.styles import adain

    fc = encoder(content, upto=level)[level]
    t = adain(fc, style_feat)
    if alpha < 1.0:
        t = alpha * t + (1.0 - alpha) * fc.float()
    return decoder(t.to(fc.dtype)), t


class AdainPredictor:
    """Options: ``style`` (uint8 ``[1 or N, 3, h, w]``, required), ``alpha`` (0..1, default 1),
    ``preserve_product`` (bool; default: as trained)."""

    channels = 3
    scale = 1

    def __init__(self, encoder: nn.Module, decoder: Decoder, config: dict[str, Any], device: torch.device) -> None:
        from productgen.models.style import inference_recipe

        self.config, self.device = config, device
        self.style_cfg: dict[str, Any] = config["style"]
        self.level = int(self.style_cfg["adain_level"])
        self.multiple = int(config["encoder_strides"][self.level])
        self.encoder, self.dtype = inference_recipe(encoder.to(device).eval(), device)
        self.decoder, _ = inference_recipe(decoder.to(device).eval(), device)

    def __call__(self, images: torch.Tensor, **options: Any) -> torch.Tensor:
        from productgen.common.images import to_uint8
        from productgen.models.styles import composite, product_mask, resize_short, to_float

        unknown = set(options) - {"style", "alpha", "preserve_product"}
        if unknown:
            raise UserError(
                f"the AdaIN model takes no option {sorted(unknown)[0]!r} (options: style, alpha, preserve_product)"
            )
        style = options.get("style")
        if style is None:
            raise UserError("the AdaIN model needs a style image (--style: a built-in name or a JPEG/PNG path)")
        alpha = float(options.get("alpha", 1.0) if options.get("alpha") is not None else 1.0)
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"--alpha: {alpha:g} is outside 0..1 (0 keeps the content, 1 is fully stylised)")
        style = style[None] if style.ndim == 3 else style
        if style.ndim != 4 or style.shape[1] not in (1, 3) or style.shape[0] not in (1, len(images)):
            raise UserError("style: expected uint8 [1, 3, h, w] (or one style per image)")
        x = to_float(images.to(self.device))
        s = resize_short(to_float(style.to(self.device)), min(x.shape[-2:]))
        if self.device.type == "cuda":
            x, s = x.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, self.dtype, enabled=self.dtype is not None):
            fs = self.encoder(s, upto=self.level)[self.level]
            y, _ = stylise(self.encoder, self.decoder, x, fs, self.level, alpha)
        y = y.float()[..., : x.shape[-2], : x.shape[-1]]
        preserve = options.get("preserve_product")
        if bool(self.style_cfg.get("preserve_product", False)) if preserve is None else bool(preserve):
            c = self.style_cfg
            y = composite(y, product_mask(x, c["mask_threshold"], c["mask_dilate"], c["mask_feather"]))
        return to_uint8(y, low=0.0).cpu()


def build_decoder(config: dict[str, Any]) -> Decoder:
    c = config["style"]
    level = int(c["adain_level"])
    return Decoder(
        int(config["encoder_channels"][level]), int(config["encoder_strides"][level]), int(c["decoder_channels"])
    )


def load_predictor(folder: Path, device: str | torch.device = "cpu") -> AdainPredictor:
    """The AdaIN model saved by ``productgen train adain`` (decoder + encoder safetensors, config.json)."""
    from productgen.models.encoders import build_encoder
    from productgen.models.io import load_weights, read_model_config

    config, _ = read_model_config(folder, f"{__name__}:load_predictor", "an AdaIN model")
    encoder = load_weights(build_encoder(config["style"]["encoder"]), folder / "encoder.safetensors")
    decoder = load_weights(build_decoder(config), folder / "decoder.safetensors")
    return AdainPredictor(encoder, decoder, config, torch.device(device))
