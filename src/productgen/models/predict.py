"""Image -> image models behind one interface, so the CLI commands (enhance, stylize, translate), the MLflow
pyfunc and the evaluation all apply any trained model the same way.

A model folder (safetensors + ``config.json``) names its task in ``config["model"]``; :func:`load_predictor`
looks that task up in the task registry (:mod:`productgen.tasks`, its ``predictor`` entry) and imports
the family's ``load_predictor(folder, device)`` lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from productgen.common.errors import UserError
from productgen.models.io import read_config


class Predictor(Protocol):
    """Applies a trained model to a batch of images.

    ``channels``: 1 (grayscale) or 3 (RGB) input the model expects; ``multiple``: input height and width must be
    multiples of this (callers pad); ``scale``: output size / input size (2 or 4 for super-resolution, else 1).
    ``__call__`` takes uint8 ``[N, C, H, W]`` and returns uint8 ``[N, C, H*scale, W*scale]`` on the CPU;
    ``options`` are model-specific (for example ``style=`` a uint8 ``[1, 3, h, w]`` tensor for AdaIN, ``alpha=``).
    """

    channels: int
    multiple: int
    scale: int
    config: dict[str, Any]

    def __call__(self, images: torch.Tensor, **options: Any) -> torch.Tensor: ...


def load_predictor(folder: Path | str, device: str | torch.device = "cpu") -> Predictor:
    """The predictor of a model folder, or of a registered model: an MLflow URI
    (``models:/productgen-restore@champion``, ``models:/productgen-restore/3``) or a bare registered name
    (``productgen-restore``: its champion). MLflow is imported only for those."""
    text = str(folder)
    if "/" not in text and not Path(text).exists():  # a bare registered name: its champion
        text = f"models:/{text}@champion"
    if text.startswith(("models:/", "runs:/")):
        from productgen.tracking.runs import resolve_model

        folder = resolve_model(text)
    folder = Path(folder)
    from productgen import tasks

    kind = read_config(folder).get("model")
    spec = tasks.for_model(str(kind))
    if spec is None or spec.predictor is None:
        image_models = sorted(t.name for t in tasks.TASKS.values() if t.predictor)
        raise UserError(
            f"{folder}: holds a {kind!r} model, which does not map images to images "
            f"(image models: {', '.join(image_models)})"
        )
    return spec.load_predictor(folder, device)


def compile_predictor(predictor: Predictor, mode: str = "default") -> Predictor:
    """``torch.compile`` the networks a predictor holds (attributes that are modules, or dicts of them), in place.

    Why: on a GPU the eager bf16 + channels_last recipe of the style networks is no faster than the fp32
    baseline (instance norm in channels_last costs layout copies); compiled, they fuse and run 2.5x (per-style)
    to 6x (AdaIN) faster at 512 px (bench/bench_stylize.py on an H200, README). Each new image size compiles
    once more (tens of seconds), so it pays off on large folders of similar sizes.
    """
    for name, value in list(vars(predictor).items()):
        if isinstance(value, nn.Module):
            setattr(predictor, name, torch.compile(value, mode=mode))
        elif isinstance(value, dict) and value and all(isinstance(v, nn.Module) for v in value.values()):
            setattr(predictor, name, {k: torch.compile(v, mode=mode) for k, v in value.items()})
    return predictor
