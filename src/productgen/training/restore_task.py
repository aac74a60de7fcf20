"""The ``restore`` task: a residual U-Net learning degraded -> clean on pairs made on the fly.

Pairs are made inside ``train_step`` from the clean uint8 batch, with noise (and flips) drawn from the engine's
generator: every step sees fresh degradations, nothing is stored, and a resumed run draws exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from productgen.common.images import to_uint8
from productgen.config import RestoreConfig, ViewsConfig
from productgen.models.restore import UNet, degrade, parse_view
from productgen.tasks import DatasetInfo
from productgen.training.engine import Engine


def cosine_lr(step: int, lr: float, lr_min: float, decay_steps: int, warmup_steps: int = 0) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay from ``lr`` to ``lr_min`` over ``decay_steps`` steps
    (counted from step 0), constant after (and when 0)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay_steps <= 0:
        return lr
    t = min(step, decay_steps) / decay_steps
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * t))


def preview_images(info: DatasetInfo, n: int = 8) -> torch.Tensor:
    """``n`` fixed clean images for sample grids: the first of the val split (train when val is empty)."""
    from productgen.data.dataset import PreparedDataset

    ds = PreparedDataset(info.root)
    for split in ("val", "train"):
        images, _ = ds.tensors(split)
        if len(images):
            return images[:n].clone()
    raise ValueError(f"{info.root}: no images to preview")


def random_flip(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2 (product photos are left-right symmetric enough)."""
    flip = torch.rand(len(clean), generator=generator, device=clean.device) < 0.5
    return torch.where(flip[:, None, None, None], clean.flip(-1), clean)


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """L1, Charbonnier or L2 (mean squared error, the quantity PSNR measures) in [0, 1] space for images in [-1, 1]."""
    diff = (pred.float() - target.float()) * 0.5
    if kind == "charbonnier":
        return torch.sqrt(diff * diff + 1e-6).mean()
    if kind == "l2":
        return (diff * diff).mean()
    return diff.abs().mean()


def restorer_config(model: str, section: str, cfg: Any, views_cfg: ViewsConfig, info: DatasetInfo) -> dict[str, Any]:
    """config.json of a restorer: what load_predictor needs to rebuild it and redo its degradation."""
    return {
        "model": model,
        "view": cfg.view,
        section: asdict(cfg),
        "views": {"blur_sigma": views_cfg.blur_sigma, "jpeg_quality": views_cfg.jpeg_quality},
        "resolution": info.resolution,
        "channels": info.channels,
        "num_classes": len(info.classes),
        "classes": info.classes,
    }


class RestoreTask:
    name = "restore"
    ema_module = "net"

    def __init__(self, cfg: RestoreConfig, views_cfg: ViewsConfig, engine: Engine, info: DatasetInfo) -> None:
        parse_view(cfg.view)  # a bad view is a one-line error before any work
        self.cfg, self.views_cfg, self.info = cfg, views_cfg, info
        torch.manual_seed(engine.cfg.seed)  # identical initial weights for a given seed
        net = UNet(info.channels, cfg.channels, cfg.max_channels, cfg.levels, cfg.blocks, cfg.norm)
        self.modules = {"net": engine.prepare_module(net)}
        self.optimizers = {"net": engine.adam(self.modules["net"].parameters(), cfg.lr, (cfg.beta1, cfg.beta2))}
        self.preview = preview_images(info).to(engine.rt.device)

    def config(self) -> dict[str, Any]:
        return restorer_config("restore", "restore", self.cfg, self.views_cfg, self.info)

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        """The EMA network is the model; the raw one is kept for comparison."""
        assert engine.ema is not None
        return {"restore": engine.ema.shadow, "restore_raw": self.modules["net"]}

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, gen = self.cfg, engine.generator
        for group in self.optimizers["net"].param_groups:
            group["lr"] = cosine_lr(engine.step, cfg.lr, cfg.lr_min, cfg.decay_steps, cfg.warmup_steps)
        clean = random_flip(images, gen) if cfg.flip else images
        degraded = degrade(clean, cfg.view, self.views_cfg, gen)
        x, y = engine.to_input(degraded), engine.to_input(clean)
        net = engine.fast("net", self.modules["net"])
        with engine.autocast():
            out = net(x)
        loss = pixel_loss(out, y, cfg.loss)
        engine.optimize(self.optimizers["net"], loss)
        with torch.no_grad():
            mse = ((out.detach().float().clamp(-1, 1) - y) * 0.5).pow(2).mean()
            mse_in = ((x - y) * 0.5).pow(2).mean()
        return {
            "loss": loss.detach(),
            "psnr_batch": -10 * torch.log10(mse.clamp_min(1e-12)),
            "psnr_input": -10 * torch.log10(mse_in.clamp_min(1e-12)),
        }

    @torch.no_grad()
    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray:
        """Rows: degraded / restored (EMA network) / clean, for 8 fixed validation images."""
        net = engine.ema.shadow if engine.ema is not None else self.modules["net"]
        degraded = degrade(self.preview, self.cfg.view, self.views_cfg, generator)
        restored = to_uint8(net(engine.to_input(degraded)))
        return torch.cat([degraded, restored, self.preview]).cpu().numpy()


def build(params: Any, engine: Engine, info: DatasetInfo) -> RestoreTask:
    return RestoreTask(params.restore, params.views, engine, info)
