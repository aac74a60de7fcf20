"""The class-conditional GAN as a :class:`~productgen.training.engine.Task`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from productgen.common.errors import UserError
from productgen.common.images import to_uint8
from productgen.config import GanConfig
from productgen.models.gan import Discriminator, Generator, d_loss, diffaugment, g_loss
from productgen.tasks import DatasetInfo
from productgen.training.engine import Engine


class GanTask:
    name = "gan"
    ema_module = "G"

    def __init__(self, cfg: GanConfig, engine: Engine, resolution: int, channels: int, classes: list[str]) -> None:
        if not 0.0 <= cfg.lr_decay_start <= 1.0:
            raise UserError(f"gan.lr_decay_start: {cfg.lr_decay_start} is not a fraction of train.max_steps in [0, 1]")
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
        self.base_lr = {"G": cfg.lr_g, "D": cfg.lr_d}

    def config(self) -> dict[str, Any]:
        gan = asdict(self.cfg)
        if not gan["self_modulation"]:  # as written before the option existed: older checkpoints still --resume
            del gan["self_modulation"]
        if gan["lr_decay_start"] == 1.0:  # likewise: constant-lr checkpoints from before the option still resume
            del gan["lr_decay_start"]
        return {"model": "gan", "gan": gan, **self.shape, "classes": self.classes}

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        """The EMA generator is the model users get; the discriminator and raw generator are kept for analysis."""
        assert engine.ema is not None
        return {"generator": engine.ema.shadow, "discriminator": self.modules["D"], "generator_raw": self.modules["G"]}

    def _noise(self, engine: Engine, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, generator=engine.generator, device=engine.rt.device)

    def _fake_labels(self, engine: Engine, n: int) -> torch.Tensor:
        return torch.randint(0, len(self.classes), (n,), generator=engine.generator, device=engine.rt.device)

    def set_learning_rates(self, engine: Engine) -> None:
        """The lr of this step: a function of the step alone, so a resumed run continues the same schedule."""
        scale = lr_scale(engine.step, engine.cfg.max_steps, self.cfg.lr_decay_start)
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = self.base_lr[name] * scale

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.cfg.lr_decay_start < 1.0:
            self.set_learning_rates(engine)
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


def lr_scale(step: int, max_steps: int, decay_start: float) -> float:
    """1 until ``decay_start * max_steps``, then linearly down to ``1 / (steps in the decay)`` at the last step
    (the step index runs to ``max_steps - 1``, so no step is taken at lr 0)."""
    start = int(round(decay_start * max_steps))
    if step < start or max_steps <= start:
        return 1.0
    return (max_steps - step) / (max_steps - start)


def build(params: Any, engine: Engine, info: DatasetInfo) -> GanTask:
    return GanTask(params.gan, engine, info.resolution, info.channels, info.classes)
