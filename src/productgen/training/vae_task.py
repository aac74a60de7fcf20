"""The ``vae`` (class-conditional VAE, sampling per category) and ``vae-restore`` (VAE restorer) tasks.

Loss = reconstruction (summed over pixels, in [0, 1]) + beta * KL, with beta ramped up linearly over
``vae.kl_warmup`` steps when set (so the decoder learns to use the latent before the KL term squeezes it).
Reparameterisation noise and degradations come from the engine's generator, so resume is exact.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from productgen.common.images import to_uint8
from productgen.config import VaeConfig, ViewsConfig
from productgen.models.restore import degrade, parse_view
from productgen.models.vae import (
    ConditionalVAE,
    VaeRestorer,
    check_resolution,
    fit_prior,
    kl_normal,
    recon_loss,
)
from productgen.tasks import DatasetInfo
from productgen.training.engine import Engine, warn
from productgen.training.restore_task import preview_images, random_flip


def kl_weight(cfg: VaeConfig, step: int) -> float:
    """beta, ramped linearly from 0 over ``kl_warmup`` steps (a function of the step only: resume-safe)."""
    if cfg.kl_warmup <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, (step + 1) / cfg.kl_warmup)


class VaeTask:
    name = "vae"
    ema_module = "vae"

    def __init__(self, cfg: VaeConfig, engine: Engine, info: DatasetInfo) -> None:
        self.cfg, self.info = cfg, info
        torch.manual_seed(engine.cfg.seed)
        net = ConditionalVAE(
            info.resolution,
            info.channels,
            len(info.classes),
            cfg.z_dim,
            cfg.channels,
            cfg.max_channels,
            cfg.levels,
            cfg.embed_dim,
            cfg.prior == "fitted",
        )
        self.modules = {"vae": engine.prepare_module(net)}
        self.optimizers = {"vae": engine.adam(self.modules["vae"].parameters(), cfg.lr, (cfg.beta1, cfg.beta2))}

    def config(self) -> dict[str, Any]:
        """``gan.z_dim`` duplicates ``vae.z_dim`` so the GAN sampling and FID code can use the decoder as is."""
        return {
            "model": "vae",
            "vae": asdict(self.cfg),
            "gan": {"z_dim": self.cfg.z_dim},
            "resolution": self.info.resolution,
            "channels": self.info.channels,
            "num_classes": len(self.info.classes),
            "classes": self.info.classes,
        }

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        """The EMA decoder as ``generator`` (GAN-compatible); the raw full VAE (with encoder) for analysis.

        With ``vae.prior: fitted`` the EMA VAE's own encoder places the training split in latent space first and
        the decoder's per-category Gaussian is fitted to it (the encoder the decoder was averaged with).
        """
        assert engine.ema is not None
        if self.cfg.prior == "fitted":
            self._fit_prior(engine)
        return {"generator": engine.ema.shadow.decoder, "vae": self.modules["vae"]}

    def _fit_prior(self, engine: Engine) -> None:
        from productgen.data.dataset import PreparedDataset

        images, labels = PreparedDataset(self.info.root).tensors(engine.cfg.split)
        batch = 500
        batches = (
            (engine.to_input(images[i : i + batch]), labels[i : i + batch]) for i in range(0, len(images), batch)
        )
        fitted = fit_prior(engine.ema.shadow, batches)
        warn(
            f"fitted the sampling prior to {sum(fitted['images']):,} {engine.cfg.split} images' latents "
            f"(mean log-det {fitted['mean_logdet']:.1f}; N(0, I): 0)"
        )

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = engine.to_input(images)
        y = labels.to(engine.rt.device)
        eps = torch.randn(len(x), self.cfg.z_dim, generator=engine.generator, device=engine.rt.device)
        with engine.autocast():
            logits, mu, logvar = engine.fast("vae", self.modules["vae"])(x, y, eps)
        rec = recon_loss(logits, x, self.cfg.recon)
        kl = kl_normal(mu.float(), logvar.float())
        loss = rec + kl_weight(self.cfg, engine.step) * kl
        engine.optimize(self.optimizers["vae"], loss)
        return {"loss": loss.detach(), "recon": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray:
        """8 samples per class (rows = classes) from the EMA decoder, with fixed noise."""
        dec = engine.ema.shadow.decoder if engine.ema is not None else self.modules["vae"].decoder
        y = torch.arange(len(self.info.classes), device=engine.rt.device).repeat_interleave(8)
        z = torch.randn(len(y), self.cfg.z_dim, generator=generator, device=engine.rt.device)
        return to_uint8(dec(z, y)).cpu().numpy()


class VaeRestoreTask:
    name = "vae-restore"
    ema_module = "net"

    def __init__(self, cfg: VaeConfig, views_cfg: ViewsConfig, engine: Engine, info: DatasetInfo) -> None:
        parse_view(cfg.view, "vae.view")
        check_resolution(info.resolution, cfg.levels)
        self.cfg, self.views_cfg, self.info = cfg, views_cfg, info
        torch.manual_seed(engine.cfg.seed)
        net = VaeRestorer(info.channels, cfg.z_dim, cfg.channels, cfg.max_channels, cfg.levels)
        self.modules = {"net": engine.prepare_module(net)}
        self.optimizers = {"net": engine.adam(self.modules["net"].parameters(), cfg.lr, (cfg.beta1, cfg.beta2))}
        self.preview = preview_images(info).to(engine.rt.device)

    def config(self) -> dict[str, Any]:
        from productgen.training.restore_task import restorer_config

        return restorer_config("vae-restore", "vae", self.cfg, self.views_cfg, self.info)

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        assert engine.ema is not None
        return {"vae_restore": engine.ema.shadow, "vae_restore_raw": self.modules["net"]}

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        gen = engine.generator
        clean = random_flip(images, gen)
        x, y = engine.to_input(degrade(clean, self.cfg.view, self.views_cfg, gen)), engine.to_input(clean)
        with engine.autocast():
            logits, mu, logvar = engine.fast("net", self.modules["net"], "train_forward")(y, x, gen)
        rec = recon_loss(logits, y, self.cfg.recon)
        kl = kl_normal(mu.float(), logvar.float())
        loss = rec + kl_weight(self.cfg, engine.step) * kl
        engine.optimize(self.optimizers["net"], loss)
        return {"loss": loss.detach(), "recon": rec.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray:
        """Rows: degraded / restored (prior mean, EMA network) / clean, for 8 fixed validation images."""
        net = engine.ema.shadow if engine.ema is not None else self.modules["net"]
        degraded = degrade(self.preview, self.cfg.view, self.views_cfg, generator)
        restored = to_uint8(net(engine.to_input(degraded)))
        return torch.cat([degraded, restored, self.preview]).cpu().numpy()


def build_vae(params: Any, engine: Engine, info: DatasetInfo) -> VaeTask:
    return VaeTask(params.vae, engine, info)


def build_restore(params: Any, engine: Engine, info: DatasetInfo) -> VaeRestoreTask:
    return VaeRestoreTask(params.vae, params.views, engine, info)
