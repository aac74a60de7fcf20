"""The class-conditional GAN as a :class:`~productgen.training.engine.Task`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from productgen.common.images import to_uint8
from productgen.config import GanConfig
from productgen.models.gan import Discriminator, Generator, d_loss, diffaugment, g_loss
from productgen.tasks import DatasetInfo
from productgen.training.engine import Engine


class GanTask:
    name = "gan"
    ema_module = "G"

    def __init__(self, cfg: GanConfig, engine: Engine, resolution: int, channels: int, classes: list[str]) -> None:
        self.cfg, self.classes = cfg, classes
        self.shape = {"resolution": resolution, "channels": channels, "num_classes": len(classes)}
        torch.manual_seed(engine.cfg.seed)  # identical initial weights for a given seed
        g = Generator(
            resolution,
            channels,
            len(classes),
            cfg.z_dim,
            cfg.g_channels,
            cfg.max_channels,
            cfg.embed_dim,
            cfg.self_modulation,
        )
        d = Discriminator(resolution, channels, len(classes), cfg.d_channels, cfg.max_channels, cfg.spectral_norm)
        self.modules = {"G": engine.prepare_module(g), "D": engine.prepare_module(d)}
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {
            "G": engine.adam(self.modules["G"].parameters(), cfg.lr_g, betas),
            "D": engine.adam(self.modules["D"].parameters(), cfg.lr_d, betas),
        }

    def config(self) -> dict[str, Any]:
        gan = asdict(self.cfg)
        if not gan["self_modulation"]:  # as written before the option existed: older checkpoints still --resume
            del gan["self_modulation"]
        return {"model": "gan", "gan": gan, **self.shape, "classes": self.classes}

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        """The EMA generator is the model users get; the discriminator and raw generator are kept for analysis."""
        assert engine.ema is not None
        return {"generator": engine.ema.shadow, "discriminator": self.modules["D"], "generator_raw": self.modules["G"]}

    def _noise(self, engine: Engine, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, generator=engine.generator, device=engine.rt.device)

    def _fake_labels(self, engine: Engine, n: int) -> torch.Tensor:
        return torch.randint(0, len(self.classes), (n,), generator=engine.generator, device=engine.rt.device)

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        G, D = engine.fast("G", self.modules["G"]), engine.fast("D", self.modules["D"])
        real = engine.to_input(images)
        n = len(real)
        policy, gen = self.cfg.diffaugment, engine.generator
        for _ in range(self.cfg.d_steps):
            with torch.no_grad(), engine.autocast():
                fake = G(self._noise(engine, n), labels)
            with engine.autocast():
                logits_real = D(diffaugment(real, policy, gen), labels)
                logits_fake = D(diffaugment(fake.float(), policy, gen), labels)
                loss_d = d_loss(logits_real.float(), logits_fake.float(), self.cfg.loss)
            engine.optimize(self.optimizers["D"], loss_d)
        y_fake = self._fake_labels(engine, n)
        with engine.autocast():
            fake = G(self._noise(engine, n), y_fake)
            loss_g = g_loss(D(diffaugment(fake, policy, gen), y_fake).float(), self.cfg.loss)
        engine.optimize(self.optimizers["G"], loss_g)
        d_acc = 0.5 * ((logits_real > 0).float().mean() + (logits_fake < 0).float().mean())
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": logits_real.detach().float().mean(),
            "d_fake": logits_fake.detach().float().mean(),
            "d_acc": d_acc.detach(),
        }

    @torch.no_grad()
    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray:
        """8 samples per class (rows = classes) from the EMA generator, with fixed noise."""
        g = engine.ema.shadow if engine.ema is not None else self.modules["G"]
        k = len(self.classes)
        y = torch.arange(k, device=engine.rt.device).repeat_interleave(8)
        z = torch.randn(len(y), self.cfg.z_dim, generator=generator, device=engine.rt.device)
        return to_uint8(g(z, y)).cpu().numpy()


def build(params: Any, engine: Engine, info: DatasetInfo) -> GanTask:
    return GanTask(params.gan, engine, info.resolution, info.channels, info.classes)
