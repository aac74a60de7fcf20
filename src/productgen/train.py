"""``productgen train``: the lifecycle step that turns a prepared dataset into a trained model folder.

    out/
      checkpoints/ckpt-NNNNNNNN.safetensors   complete state for --resume
      samples/step-NNNNNNN.png                EMA-generator grids (one row per category)
      metrics.jsonl                           losses, discriminator accuracy, images/s per log step
      loss_curve.png
      model/{generator,discriminator}.safetensors + config.json
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from productgen.config import Params
from productgen.errors import UserError

TASKS = ("gan",)


def train(params: Params, task: str = "gan", resume: bool = False, show_progress: bool = True) -> Any:
    from productgen.data.dataset import PreparedDataset
    from productgen.models.io import save_model
    from productgen.plots import loss_curve
    from productgen.training.device import init_runtime, shutdown
    from productgen.training.engine import Engine, fit
    from productgen.training.gan_task import GanTask

    if task not in TASKS:
        raise UserError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    cfg = params.train
    out = Path(cfg.out)
    ds = PreparedDataset(cfg.prepared or params.data.out)
    images, labels = ds.tensors(cfg.split)
    if len(images) < cfg.batch_size:
        raise UserError(f"{ds.root}: the {cfg.split} split has {len(images)} images, fewer than train.batch_size={cfg.batch_size}")
    rt = init_runtime(cfg.device, cfg.precision)
    try:
        engine = Engine(cfg, rt, out)
        model = GanTask(params.gan, engine, ds.resolution, ds.channels, ds.classes)
        result = fit(model, engine, images, labels, resume=resume, show_progress=show_progress)
        if rt.is_main:
            config = {**model.config(), "step": result.step, "dataset": {"path": str(ds.root), "content_hash": ds.content_hash},
                      "train": dataclasses.asdict(cfg)}  # fmt: skip
            assert engine.ema is not None
            save_model(out / "model", {"generator": engine.ema.shadow, "discriminator": model.modules["D"],
                                       "generator_raw": model.modules["G"]}, config)  # fmt: skip
            loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
        return result
    finally:
        shutdown(rt)
