"""Style transfer as engine tasks: ``style`` (Johnson et al., one network per style image) and ``adain``
(Huang & Belongie, one decoder for any style image).

Both train on the prepared dataset's product images, upscaled to ``style.image_size`` and shown as RGB
products on white (see :mod:`productgen.models.styles`), against a frozen perceptual encoder. The encoder is not a
trained module, so it is not in ``modules`` and not checkpointed: it is rebuilt from its fixed weights, which
keeps resumes exact. Every random choice (AdaIN's style and crop per image) is drawn from
``engine.generator``, whose state is in the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from productgen.config import StyleConfig
from productgen.tasks import DatasetInfo
from productgen.training.engine import Engine


def _dark_background(info: DatasetInfo) -> bool:
    """Whether the prepared images are light products on black (the built-in Fashion-MNIST)."""
    try:
        meta = json.loads((Path(info.root) / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return int(meta.get("background", 255)) < 128


def _sample_content(info: DatasetInfo, split: str, n: int = 8) -> torch.Tensor:
    """``n`` fixed product images for sample grids: one per category first (from val when it has enough)."""
    from productgen.data.dataset import PreparedDataset

    ds = PreparedDataset(info.root)
    use = "val" if ds.counts.get("val", 0) >= n else split
    images, labels = ds.tensors(use)
    picked: list[int] = []
    for c in range(len(info.classes)):
        hits = (labels == c).nonzero().flatten()
        if len(hits):
            picked.append(int(hits[0]))
    picked += [i for i in range(len(images)) if i not in picked][: max(0, n - len(picked))]
    return images[picked[:n]]


def _style_digest(spec: str) -> str:
    """Identifies the style image in config.json (a user's file can change under the same path)."""
    from productgen.models.styles import load_style

    return hashlib.sha256(load_style(spec, max_side=None).tobytes()).hexdigest()[:16]


class _StyleBase:
    """What both tasks share: encoder, content preparation, product mask, sample content."""

    ema_module: str | None = None

    def __init__(self, cfg: StyleConfig, engine: Engine, info: DatasetInfo, split: str) -> None:
        from productgen.models.encoders import load_encoder

        self.cfg, self.info = cfg, info
        self.device = engine.rt.device
        self.encoder = load_encoder(cfg.encoder, cfg.encoder_weights, cfg.allow_download, self.device)
        if engine.cfg.channels_last and self.device.type == "cuda":
            self.encoder = self.encoder.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.invert = cfg.invert_dark_background and _dark_background(info)
        self.samples = _sample_content(info, split).to(self.device)

    def content(self, engine: Engine, images: torch.Tensor) -> torch.Tensor:
        from productgen.models.styles import content_batch

        x = content_batch(images.to(self.device, non_blocking=True), self.cfg.image_size, self.invert)
        if engine.cfg.channels_last and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        from productgen.models.styles import product_mask

        if not self.cfg.preserve_product:
            return None
        c = self.cfg
        return product_mask(x, c.mask_threshold, c.mask_dilate, c.mask_feather)

    def shape(self) -> dict[str, Any]:
        return {
            "style": asdict(self.cfg),
            "resolution": self.info.resolution,
            "channels": self.info.channels,
            "classes": list(self.info.classes),
            "invert_content": self.invert,
            "encoder_channels": list(self.encoder.channels),
            "encoder_strides": list(self.encoder.strides),
        }


class StyleTask(_StyleBase):
    """Johnson et al.: a TransformerNet trained against the Gram matrices of one style image."""

    name = "style"

    def __init__(self, cfg: StyleConfig, engine: Engine, info: DatasetInfo, split: str) -> None:
        from productgen.models.style import TransformerNet
        from productgen.models.styles import gram, style_tensor

        super().__init__(cfg, engine, info, split)
        style = style_tensor(cfg.style_image, cfg.style_size, self.device)
        with torch.no_grad():
            self.style_grams = [gram(f) for f in self.encoder(style)]
        self.style_digest = _style_digest(cfg.style_image)
        torch.manual_seed(engine.cfg.seed)  # identical initial weights for a given seed
        net = engine.prepare_module(TransformerNet(cfg.channels, cfg.residual_blocks))
        self.modules: dict[str, torch.nn.Module] = {"net": net}
        self.optimizers = {"net": engine.adam(net.parameters(), cfg.lr, (0.9, 0.999))}

    def config(self) -> dict[str, Any]:
        return {"model": "style", **self.shape(), "style_digest": self.style_digest}

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        return {"transformer": self.modules["net"]}

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        from productgen.models.styles import composite, content_loss, style_loss, tv_loss

        c = self.cfg
        net = engine.fast("net", self.modules["net"])
        x = self.content(engine, images)
        mask = self.mask(x)
        with torch.no_grad(), engine.autocast():
            target = self.encoder(x, upto=c.content_level)[c.content_level]
        with engine.autocast():
            y = net(x)
            out = composite(y, mask) if mask is not None else y
            feats = self.encoder(out)
            lc = content_loss(feats[c.content_level], target)
            ls = style_loss(feats, self.style_grams, mask)
            ltv = tv_loss(y)
            loss = c.content_weight * lc + c.style_weight * ls + c.tv_weight * ltv
        engine.optimize(self.optimizers["net"], loss)
        return {"loss": loss.detach(), "content": lc.detach(), "style": ls.detach(), "tv": ltv.detach()}

    @torch.no_grad()
    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray:
        """Row 1: the fixed product images; row 2: stylised (with the product mask when preserving)."""
        from productgen.common.images import to_uint8
        from productgen.models.styles import composite

        x = self.content(engine, self.samples)
        mask = self.mask(x)
        with engine.autocast():
            y = self.modules["net"](x).float()
        y = composite(y, mask) if mask is not None else y
        return to_uint8(torch.cat([x, y]), low=0.0).cpu().numpy()


class AdainTask(_StyleBase):
    """Huang & Belongie: a decoder trained to invert AdaIN-mixed encoder features, over many style images."""

    name = "adain"

    def __init__(self, cfg: StyleConfig, engine: Engine, info: DatasetInfo, split: str) -> None:
        from productgen.models.adain import Decoder
        from productgen.models.styles import style_tensor

        super().__init__(cfg, engine, info, split)
        s = cfg.image_size
        self.styles = [style_tensor(spec, max(cfg.style_size, s), self.device) for spec in cfg.adain_styles]
        self.style_digests = [_style_digest(spec) for spec in cfg.adain_styles]
        level = cfg.adain_level
        torch.manual_seed(engine.cfg.seed)
        dec = engine.prepare_module(
            Decoder(self.encoder.channels[level], self.encoder.strides[level], cfg.decoder_channels)
        )
        self.modules: dict[str, torch.nn.Module] = {"decoder": dec}
        self.optimizers = {"decoder": engine.adam(dec.parameters(), cfg.adain_lr, (0.9, 0.999))}

    def config(self) -> dict[str, Any]:
        return {"model": "adain", **self.shape(), "style_digests": self.style_digests}

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        """The decoder plus the frozen encoder, so the model folder alone is enough for inference."""
        return {"decoder": self.modules["decoder"], "encoder": self.encoder}

    def _crops(self, which: list[int], offsets: torch.Tensor) -> torch.Tensor:
        """An ``image_size`` square crop per image of style ``which[i]`` at relative position ``offsets[i]``."""
        s = self.cfg.image_size
        out = []
        for i, k in enumerate(which):
            st = self.styles[k]
            h, w = st.shape[-2:]
            oy, ox = int(offsets[i, 0] * (h - s + 1)), int(offsets[i, 1] * (w - s + 1))
            out.append(st[..., oy : oy + s, ox : ox + s])
        return torch.cat(out)

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        from productgen.models.adain import stylise
        from productgen.models.styles import composite, content_loss, mean_std, moment_loss

        c, level = self.cfg, self.cfg.adain_level
        dec = engine.fast("decoder", self.modules["decoder"])
        x = self.content(engine, images)
        n = len(x)
        which = torch.randint(0, len(self.styles), (n,), generator=engine.generator, device=self.device)
        offsets = torch.rand(n, 2, generator=engine.generator, device=self.device)
        style = self._crops(which.tolist(), offsets.cpu())
        if engine.cfg.channels_last and self.device.type == "cuda":
            style = style.contiguous(memory_format=torch.channels_last)
        mask = self.mask(x)
        with torch.no_grad(), engine.autocast():
            fs = self.encoder(style)
            targets = [mean_std(f) for f in fs]
        with engine.autocast():
            y, t = stylise(self.encoder, dec, x, fs[level], level)
            out = composite(y, mask) if mask is not None else y
            feats = self.encoder(out)
            lc = content_loss(feats[level], t.detach())
            ls = moment_loss(feats, targets, mask)
            loss = c.content_weight * lc + c.adain_style_weight * ls
        engine.optimize(self.optimizers["decoder"], loss)
        return {"loss": loss.detach(), "content": lc.detach(), "style": ls.detach()}

    @torch.no_grad()
    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray:
        """Rows: the fixed product images; a centre crop of style ``i mod styles``; the stylised result."""
        from productgen.common.images import to_uint8
        from productgen.models.adain import stylise
        from productgen.models.styles import composite

        x = self.content(engine, self.samples)
        n = len(x)
        which = [i % len(self.styles) for i in range(n)]
        style = self._crops(which, torch.full((n, 2), 0.5))
        dec = self.modules["decoder"]
        with engine.autocast():
            fs = self.encoder(style, upto=self.cfg.adain_level)[self.cfg.adain_level]
            y, _ = stylise(self.encoder, dec, x, fs, self.cfg.adain_level)
        y = y.float()
        mask = self.mask(x)
        y = composite(y, mask) if mask is not None else y
        return to_uint8(torch.cat([x, style.float(), y]), low=0.0).cpu().numpy()


def build_style(params: Any, engine: Engine, info: DatasetInfo) -> StyleTask:
    return StyleTask(params.style, engine, info, params.train.split)


def build_adain(params: Any, engine: Engine, info: DatasetInfo) -> AdainTask:
    return AdainTask(params.style, engine, info, params.train.split)
