"""pix2pix and CycleGAN as :class:`~productgen.training.engine.Task` objects.

pix2pix learns from pairs made on the fly: the input is a deterministic view of the clean batch (edges by
default, so it learns sketch -> product), the target is the clean batch. CycleGAN has no pairs: it draws
batches of two domains (two categories of the prepared dataset, or two image folders) from the engine's
generator, so the data order is part of the checkpointed RNG state and resume stays exact.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from productgen.common.errors import UserError
from productgen.common.images import to_uint8
from productgen.config import TranslateConfig, ViewsConfig
from productgen.models.translate import (
    ImagePool,
    PatchDiscriminator,
    build_generator,
    gan_loss,
    patch_layers,
    unet_depth,
)
from productgen.tasks import DatasetInfo
from productgen.training.engine import Engine

# Offset of the pseudo-indices that seed training views (noise): far from the split indices evaluation uses.
TRAIN_VIEW_INDEX = 1 << 40


def check_config(cfg: TranslateConfig, views: ViewsConfig | None = None) -> None:
    """Values the types cannot rule out, named by their ``params.yaml`` field."""
    from productgen.data.views import view_kinds

    for name in ("g_channels", "d_channels", "max_channels"):
        if getattr(cfg, name) < 1:
            raise UserError(f"translate.{name}: must be at least 1")
    if cfg.unet_depth is not None and not 2 <= cfg.unet_depth <= 8:
        raise UserError(f"translate.unet_depth: {cfg.unet_depth} is outside 2..8 (or null for automatic)")
    if cfg.d_layers is not None and not 1 <= cfg.d_layers <= 5:
        raise UserError(f"translate.d_layers: {cfg.d_layers} is outside 1..5 (or null for automatic)")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError("translate.dropout: must be in [0, 1)")
    for name in ("lambda_l1", "lambda_cycle", "lambda_identity", "pool_size", "resnet_blocks"):
        if getattr(cfg, name) < 0:
            raise UserError(f"translate.{name}: must be >= 0")
    if cfg.lr <= 0 or not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise UserError("translate.lr / beta1 / beta2: need lr > 0 and betas in [0, 1)")
    if views is not None and cfg.source_view not in view_kinds(views):
        raise UserError(
            f"translate.source_view: {cfg.source_view!r} is not a view of the views: section "
            f"(choose from {', '.join(view_kinds(views))})"
        )


def _arch(cfg: TranslateConfig, resolution: int) -> dict[str, Any]:
    """The translate section with the automatic sizes resolved, as recorded in config.json."""
    t = asdict(cfg)
    t["unet_depth"] = cfg.unet_depth or unet_depth(resolution)
    t["d_layers"] = cfg.d_layers or patch_layers(resolution)
    return t


class Pix2PixTask:
    """Conditional GAN with L1: G(source view) should equal the clean image and fool a PatchGAN on the pair."""

    name = "pix2pix"
    ema_module = "G"

    def __init__(self, cfg: TranslateConfig, views: ViewsConfig, engine: Engine, info: DatasetInfo) -> None:
        check_config(cfg, views)
        self.cfg, self.views, self.info = cfg, views, info
        self.arch = _arch(cfg, info.resolution)
        c = info.channels
        torch.manual_seed(engine.cfg.seed)  # identical initial weights for a given seed
        g = build_generator("unet", c, info.resolution, self.arch)
        d = PatchDiscriminator(2 * c, cfg.d_channels, self.arch["d_layers"], cfg.max_channels, cfg.norm)
        self.modules = {"G": engine.prepare_module(g), "D": engine.prepare_module(d)}
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {
            "G": engine.adam(self.modules["G"].parameters(), cfg.lr, betas),
            "D": engine.adam(self.modules["D"].parameters(), cfg.lr, betas),
        }
        self._fixed: torch.Tensor | None = None

    def config(self) -> dict[str, Any]:
        return {
            "model": "pix2pix",
            "translate": self.arch,
            "views": asdict(self.views),
            "source_view": self.cfg.source_view,
            "resolution": self.info.resolution,
            "channels": self.info.channels,
            "classes": self.info.classes,
        }

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        """Users get the EMA generator; the discriminator and raw generator are kept for analysis."""
        assert engine.ema is not None
        return {"generator": engine.ema.shadow, "discriminator": self.modules["D"], "generator_raw": self.modules["G"]}

    def source(self, clean: torch.Tensor, start: int) -> torch.Tensor:
        """The input view of a uint8 batch; noise views are seeded by the step, so resume sees the same noise."""
        from productgen.data.views import make_view

        idx = torch.arange(len(clean)) + TRAIN_VIEW_INDEX + start
        return make_view(clean, self.cfg.source_view, self.views, idx)

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        G, D = engine.fast("G", self.modules["G"]), engine.fast("D", self.modules["D"])
        src = engine.to_input(self.source(images, engine.step * len(images)))
        tgt = engine.to_input(images)
        kind = self.cfg.gan_loss
        with engine.autocast():
            fake = G(src)
            real_logits = D(torch.cat([src, tgt], 1)).float()
            fake_logits = D(torch.cat([src, fake.detach()], 1)).float()
            loss_d = 0.5 * (gan_loss(real_logits, True, kind) + gan_loss(fake_logits, False, kind))
        engine.optimize(self.optimizers["D"], loss_d)
        self.modules["D"].requires_grad_(False)  # the G step needs gradients through D, not of D
        with engine.autocast():
            adv = gan_loss(D(torch.cat([src, fake], 1)).float(), True, kind)
            l1 = F.l1_loss(fake.float(), tgt)
            loss_g = adv + self.cfg.lambda_l1 * l1
        engine.optimize(self.optimizers["G"], loss_g)
        self.modules["D"].requires_grad_(True)
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "g_gan": adv.detach(),
            "l1": l1.detach(),
            "d_real": real_logits.detach().mean(),
            "d_fake": fake_logits.detach().mean(),
        }

    @torch.no_grad()
    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray:
        """Rows of 8: inputs / EMA-generator outputs / targets, on fixed training images (one per category first)."""
        if self._fixed is None:
            from productgen.data.dataset import PreparedDataset

            images, labels = PreparedDataset(self.info.root, verify=False).tensors("train")
            self._fixed = _pick(images, labels, 8, generator)
        g = engine.ema.shadow if engine.ema is not None else self.modules["G"]
        src = self.source(self._fixed, -len(self._fixed) - 1)
        out = g(engine.to_input(src))
        return np.concatenate([src.cpu().numpy(), to_uint8(out).cpu().numpy(), self._fixed.cpu().numpy()])


def _pick(images: torch.Tensor, labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` images covering as many categories as possible, chosen by ``generator`` (a fixed seed)."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator, device=generator.device)))
    order = torch.randperm(len(images), generator=g)
    chosen: list[int] = []
    seen: set[int] = set()
    for i in order.tolist():
        if int(labels[i]) not in seen:
            chosen.append(i)
            seen.add(int(labels[i]))
        if len(chosen) == n:
            break
    chosen += [i for i in order.tolist() if i not in chosen][: n - len(chosen)]
    return images[torch.tensor(chosen[:n])]


def _match_category(name: str, classes: list[str], field: str) -> int:
    """Category index by name, forgiving case, spaces and hyphens ("Ankle boot" finds ankle_boot)."""
    if name in classes:
        return classes.index(name)
    norm = lambda s: s.strip().lower().replace(" ", "_").replace("-", "_")  # noqa: E731
    matches = [i for i, c in enumerate(classes) if norm(c) == norm(name)]
    if len(matches) != 1:
        raise UserError(
            f"translate.{field}: unknown category {name!r} (choose from {', '.join(classes)}), "
            "or set translate.folder_a and folder_b"
        )
    return matches[0]


def load_folder(folder: str | Path, resolution: int, channels: int, field: str) -> tuple[torch.Tensor, int]:
    """Every readable image of ``folder`` as uint8 ``[N, C, R, R]`` (resized and padded like prepared data).

    Unreadable files are skipped (their count is returned); the folder is only read.
    """
    from PIL import Image

    from productgen.apply.folders import read_image, scan_images
    from productgen.data.decode import resize_pad

    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"translate.{field}: {folder} is not a folder of images")
    arrays, skipped = [], 0
    for path in scan_images(root)[0]:  # hidden files and links leaving the folder left out
        try:
            arr = read_image(path, channels)
        except ValueError:
            skipped += 1
            continue
        im = Image.fromarray(arr[..., 0] if channels == 1 else arr)
        out = np.asarray(resize_pad(im, resolution), dtype=np.uint8)
        arrays.append(out[..., None] if out.ndim == 2 else out)
    if len(arrays) < 2:
        raise UserError(f"translate.{field}: {folder} holds {len(arrays)} readable images; need at least 2")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), skipped


def domain_images(
    cfg: TranslateConfig, info: DatasetInfo, split: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Domain A and B images (uint8) for ``split`` of the prepared dataset, or of the two folders, and a summary."""
    if (cfg.folder_a is None) != (cfg.folder_b is None):
        raise UserError("translate.folder_a / folder_b: set both (two folders of images) or neither (categories)")
    if cfg.folder_a is not None and cfg.folder_b is not None:
        a, skip_a = load_folder(cfg.folder_a, info.resolution, info.channels, "folder_a")
        b, skip_b = load_folder(cfg.folder_b, info.resolution, info.channels, "folder_b")
        meta = {
            "kind": "folders",
            "a": cfg.folder_a,
            "b": cfg.folder_b,
            "n_a": len(a),
            "n_b": len(b),
            "skipped_a": skip_a,
            "skipped_b": skip_b,
        }
        return a, b, meta
    from productgen.data.dataset import PreparedDataset

    ia = _match_category(cfg.domain_a, info.classes, "domain_a")
    ib = _match_category(cfg.domain_b, info.classes, "domain_b")
    if ia == ib:
        raise UserError("translate.domain_a / domain_b: name two different categories")
    images, labels = PreparedDataset(info.root).tensors(split)
    a, b = images[labels == ia], images[labels == ib]
    for name, x, field in ((info.classes[ia], a, "domain_a"), (info.classes[ib], b, "domain_b")):
        if len(x) < 2:
            raise UserError(f"translate.{field}: category {name!r} has {len(x)} images in the {split} split; need 2")
    meta = {"kind": "categories", "a": info.classes[ia], "b": info.classes[ib], "n_a": len(a), "n_b": len(b)}
    return a, b, meta


class CycleGanTask:
    """Two generators (A->B, B->A) and two PatchGANs; LSGAN + cycle L1 + identity L1, with an image history."""

    name = "cyclegan"
    ema_module = "G_AB"

    def __init__(self, cfg: TranslateConfig, engine: Engine, info: DatasetInfo) -> None:
        check_config(cfg)
        self.cfg, self.info = cfg, info
        self.arch = _arch(cfg, info.resolution)
        a, b, self.domains = domain_images(cfg, info, engine.cfg.split)
        dev = engine.rt.device
        self.a = a.to(dev) if engine.cfg.data_on_device else a
        self.b = b.to(dev) if engine.cfg.data_on_device else b
        c, r = info.channels, info.resolution
        torch.manual_seed(engine.cfg.seed)
        kind = cfg.cyclegan_generator
        modules: dict[str, torch.nn.Module] = {
            "G_AB": build_generator(kind, c, r, self.arch, cfg.cyclegan_residual),
            "G_BA": build_generator(kind, c, r, self.arch, cfg.cyclegan_residual),
            "D_A": PatchDiscriminator(c, cfg.d_channels, self.arch["d_layers"], cfg.max_channels, cfg.norm),
            "D_B": PatchDiscriminator(c, cfg.d_channels, self.arch["d_layers"], cfg.max_channels, cfg.norm),
        }
        if cfg.pool_size > 0:  # buffers in modules: checkpointed, so resume continues the same history
            modules["pool_A"] = ImagePool(cfg.pool_size, (c, r, r))
            modules["pool_B"] = ImagePool(cfg.pool_size, (c, r, r))
        self.modules = {k: engine.prepare_module(m) for k, m in modules.items()}
        betas = (cfg.beta1, cfg.beta2)
        g_params = list(self.modules["G_AB"].parameters()) + list(self.modules["G_BA"].parameters())
        d_params = list(self.modules["D_A"].parameters()) + list(self.modules["D_B"].parameters())
        self.optimizers = {"G": engine.adam(g_params, cfg.lr, betas), "D": engine.adam(d_params, cfg.lr, betas)}

    def config(self) -> dict[str, Any]:
        return {
            "model": "cyclegan",
            "translate": self.arch,
            "domains": self.domains,
            "resolution": self.info.resolution,
            "channels": self.info.channels,
        }

    def export(self, engine: Engine) -> dict[str, torch.nn.Module]:
        """``generator`` is the EMA A->B generator (what the predictor uses); ``generator_ba`` the B->A one."""
        assert engine.ema is not None
        return {
            "generator": engine.ema.shadow,
            "generator_ba": self.modules["G_BA"],
            "generator_raw": self.modules["G_AB"],
            "discriminator_a": self.modules["D_A"],
            "discriminator_b": self.modules["D_B"],
        }

    def _draw(self, engine: Engine, pool: torch.Tensor, n: int) -> torch.Tensor:
        idx = torch.randint(0, len(pool), (n,), generator=engine.generator, device=engine.rt.device)
        return pool[idx.to(pool.device)]

    def _history(self, engine: Engine, name: str, fakes: torch.Tensor) -> torch.Tensor:
        pool = self.modules.get(name)
        return pool.query(fakes, engine.generator) if isinstance(pool, ImagePool) else fakes.detach()

    def train_step(self, engine: Engine, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The engine's batch only sets the batch size; A and B come from the domains, drawn by the engine's RNG."""
        n = len(images)
        real_a = engine.to_input(self._draw(engine, self.a, n))
        real_b = engine.to_input(self._draw(engine, self.b, n))
        g_ab, g_ba = engine.fast("G_AB", self.modules["G_AB"]), engine.fast("G_BA", self.modules["G_BA"])
        d_a, d_b = engine.fast("D_A", self.modules["D_A"]), engine.fast("D_B", self.modules["D_B"])
        lam, lam_id = self.cfg.lambda_cycle, self.cfg.lambda_cycle * self.cfg.lambda_identity
        for name in ("D_A", "D_B"):  # the G step needs gradients through the discriminators, not of them
            self.modules[name].requires_grad_(False)
        with engine.autocast():
            fake_b, fake_a = g_ab(real_a), g_ba(real_b)
            adv = gan_loss(d_b(fake_b).float(), True, "lsgan") + gan_loss(d_a(fake_a).float(), True, "lsgan")
            cycle = F.l1_loss(g_ba(fake_b).float(), real_a) + F.l1_loss(g_ab(fake_a).float(), real_b)
            loss_g = adv + lam * cycle
            if lam_id > 0:
                identity = F.l1_loss(g_ab(real_b).float(), real_b) + F.l1_loss(g_ba(real_a).float(), real_a)
                loss_g = loss_g + lam_id * identity
            else:
                identity = torch.zeros((), device=real_a.device)
        engine.optimize(self.optimizers["G"], loss_g)
        for name in ("D_A", "D_B"):
            self.modules[name].requires_grad_(True)
        old_b = self._history(engine, "pool_B", fake_b.float())
        old_a = self._history(engine, "pool_A", fake_a.float())
        with engine.autocast():
            loss_d_b = 0.5 * (
                gan_loss(d_b(real_b).float(), True, "lsgan") + gan_loss(d_b(old_b).float(), False, "lsgan")
            )
            loss_d_a = 0.5 * (
                gan_loss(d_a(real_a).float(), True, "lsgan") + gan_loss(d_a(old_a).float(), False, "lsgan")
            )
            loss_d = loss_d_a + loss_d_b
        engine.optimize(self.optimizers["D"], loss_d)
        return {
            "loss_g": loss_g.detach(),
            "g_gan": adv.detach(),
            "cycle": cycle.detach(),
            "identity": identity.detach(),
            "loss_d": loss_d.detach(),
        }

    @torch.no_grad()
    def sample_grid(self, engine: Engine, generator: torch.Generator) -> np.ndarray:
        """Rows of 8: A / G_AB(A) (EMA) / G_BA(G_AB(A)), on fixed domain-A images."""
        g_ab = engine.ema.shadow if engine.ema is not None else self.modules["G_AB"]
        g_ba = self.modules["G_BA"]
        was_training = g_ba.training
        g_ba.eval()
        gen = torch.Generator().manual_seed(
            int(torch.randint(0, 2**31, (1,), generator=generator, device=generator.device))
        )
        idx = torch.randperm(len(self.a), generator=gen)[:8]
        a = self.a[idx.to(self.a.device)]
        x = engine.to_input(a)
        ab = g_ab(x)
        aba = g_ba(ab)
        g_ba.train(was_training)
        return np.concatenate([a.cpu().numpy(), to_uint8(ab).cpu().numpy(), to_uint8(aba).cpu().numpy()])


def build_pix2pix(params: Any, engine: Engine, info: DatasetInfo) -> Pix2PixTask:
    return Pix2PixTask(params.translate, params.views, engine, info)


def build_cyclegan(params: Any, engine: Engine, info: DatasetInfo) -> CycleGanTask:
    return CycleGanTask(params.translate, engine, info)
