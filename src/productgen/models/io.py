"""Trained models on disk: safetensors weights plus a JSON config. Loading builds the network from the config
and fills it with tensors; nothing from the files is executed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from productgen.common import atomic
from productgen.common.errors import UserError

CONFIG = "config.json"


def save_model(folder: Path, weights: dict[str, nn.Module], config: dict[str, Any]) -> Path:
    """Write ``<name>.safetensors`` per module and ``config.json`` (each file atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in weights.items():
        tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        tmp = folder / f".{name}.safetensors.tmp-{os.getpid()}"
        save_file(tensors, str(tmp), metadata={"format": "productgen-weights"})
        os.replace(tmp, folder / f"{name}.safetensors")
    atomic.write_json(folder / CONFIG, config)
    return folder


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    if not path.is_file():
        raise UserError(f"{folder}: no {CONFIG}; pass the 'model' folder written by 'productgen train'")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def read_model_config(folder: Path, loader: str, what: str) -> tuple[dict[str, Any], Any]:
    """``config.json`` of ``folder`` and the task (:class:`~productgen.tasks.TaskSpec`) of its model, checked to
    be one that ``loader`` (the calling loader's ``"module:function"``, as the task registry names it) loads;
    anything else is a :class:`UserError` saying the folder holds another kind of model, not ``what``."""
    from productgen import tasks

    cfg = read_config(folder)
    spec = tasks.for_model(str(cfg.get("model")))
    if spec is None or not spec.loads_with(loader):
        raise UserError(f"{folder}: holds a {cfg.get('model')!r} model, not {what}")
    return cfg, spec


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    """Fill ``module`` from a safetensors file; a missing, truncated or damaged file, or one that does not fit the
    architecture in config.json, is a one-line :class:`UserError` (never a traceback)."""
    if not path.is_file():
        raise UserError(f"{path}: weights file missing")
    try:
        tensors = load_file(str(path))
    except OSError as err:
        raise UserError(f"{path}: cannot read the weights ({err.strerror or err})") from None
    except Exception as err:  # safetensors' SafetensorError (a truncated file, a damaged header) and friends
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise UserError(
            f"{path}: not a readable safetensors file (truncated or damaged: {first}); re-export the "
            "model with 'productgen train' or copy the file again"
        ) from None
    try:
        module.load_state_dict(tensors)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"{path}: weights do not fit the model in config.json ({str(err).splitlines()[0]})") from None
    return module


def load_generator(folder: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The network that samples ``G(z, labels)`` of any generating task (the GAN's EMA generator, the conditional
    VAE's decoder), in eval mode, and its config: the task registry names each task's loader."""
    from productgen import tasks

    cfg = read_config(folder)
    spec = tasks.for_model(str(cfg.get("model")))
    if spec is None or not spec.generates:
        names = ", ".join(t.name for t in tasks.TASKS.values() if t.generates)
        raise UserError(
            f"{folder}: holds a {cfg.get('model')!r} model, which does not generate images from "
            f"categories (generators: {names})"
        )
    return spec.load_generator(folder, device)
