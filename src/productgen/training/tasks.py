"""The registry of trainable model tasks: one name per model family variant, one builder per name.

``productgen train <task>``, the DVC ``train`` stage, the retrain flow and the tuner all look a task up here, so
adding a model means adding one :class:`TaskSpec`, not another training loop. A builder gets the whole
:class:`~productgen.config.Params`, the :class:`~productgen.training.engine.Engine` and what the prepared dataset
looks like, and returns an object implementing the engine's ``Task`` protocol plus ``export(engine)``: the
modules to save as the trained model (weights as safetensors, config as JSON).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from productgen.errors import UserError

if TYPE_CHECKING:
    from productgen.config import Params
    from productgen.training.engine import Engine

Family = Literal["generation", "restoration", "translation", "style"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a builder needs to know about the prepared dataset it trains on."""

    resolution: int
    channels: int
    classes: list[str]
    root: str
    content_hash: str


@dataclass(frozen=True)
class TaskSpec:
    name: str
    family: Family
    section: str  # the params.yaml section holding this model's settings (logged to MLflow, hashed for --resume)
    builder: str  # "module:function" with signature (params, engine, info) -> Task; imported lazily
    summary: str

    def build(self, params: Params, engine: Engine, info: DatasetInfo) -> Any:
        module, func = self.builder.split(":")
        fn: Callable[..., Any] = getattr(importlib.import_module(module), func)
        return fn(params, engine, info)


TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    TASKS[spec.name] = spec
    return spec


def get(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r} (choose from {', '.join(sorted(TASKS))})")
    return TASKS[name]


register(TaskSpec("gan", "generation", "gan", "productgen.training.gan_task:build",
                  "the class-conditional GAN (new product images per category)"))  # fmt: skip
register(TaskSpec("restore", "restoration", "restore", "productgen.training.restore_task:build",
                  "the U-Net restorer (denoise, deblur, JPEG artefacts, 2x/4x super-resolution)"))  # fmt: skip
register(TaskSpec("vae", "generation", "vae", "productgen.training.vae_task:build_vae",
                  "the conditional VAE (new product images per category, blurrier than the GAN)"))  # fmt: skip
register(TaskSpec("vae-restore", "restoration", "vae", "productgen.training.vae_task:build_restore",
                  "the VAE restorer (degraded -> clean through a latent bottleneck; the U-Net's comparison)"))  # fmt: skip
register(TaskSpec("pix2pix", "translation", "translate", "productgen.training.translate_task:build_pix2pix",
                  "pix2pix, paired image-to-image translation (default: edges -> product, sketch to product)"))  # fmt: skip
register(TaskSpec("cyclegan", "translation", "translate", "productgen.training.translate_task:build_cyclegan",
                  "CycleGAN, unpaired translation between two categories or two image folders"))  # fmt: skip
register(TaskSpec("style", "style", "style", "productgen.training.style_task:build_style",
                  "a fast per-style transfer network (Johnson et al.) for style.style_image"))  # fmt: skip
register(TaskSpec("adain", "style", "style", "productgen.training.style_task:build_adain",
                  "an arbitrary-style AdaIN decoder (Huang & Belongie) over style.adain_styles"))  # fmt: skip
