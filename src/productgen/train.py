"""``productgen train``: the lifecycle step that turns a prepared dataset into a trained model folder.

    out/
      checkpoints/ckpt-NNNNNNNN.safetensors   complete state for --resume
      samples/step-NNNNNNN.png                EMA-generator grids (one row per category)
      metrics.jsonl                           losses, discriminator accuracy, images/s per log step
      loss_curve.png
      model/<module>.safetensors + config.json   what the task exports (the GAN: EMA generator, discriminator)

Every model family trains through this one function; the task name picks a builder from
:mod:`productgen.training.tasks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from productgen.config import Params
from productgen.errors import UserError



def train(
    params: Params, task: str = "gan", resume: bool = False, show_progress: bool = True, track: bool = False,
    register: str | None = None, on_step: Callable[[int, Any, Any], None] | None = None,
) -> Any:
    """Train ``task``; with ``track``, log params, per-step losses, artifacts, lineage and the model to MLflow.

    ``on_step(step, engine, task)`` is passed to :func:`productgen.training.engine.fit` (the tuner's hook for
    intermediate evaluations and pruning).
    """
    from productgen.data.dataset import PreparedDataset
    from productgen.models.io import save_model
    from productgen.plots import loss_curve, losses_csv
    from productgen.training.device import init_runtime, shutdown
    from productgen.training.engine import Engine, fit
    from productgen.training import tasks

    spec = tasks.get(task)
    cfg = params.train
    out = Path(cfg.out_for(task))
    ds = PreparedDataset(cfg.prepared or params.data.out)
    images, labels = ds.tensors(cfg.split)
    if len(images) < cfg.batch_size:
        raise UserError(f"{ds.root}: the {cfg.split} split has {len(images)} images, fewer than train.batch_size={cfg.batch_size}")
    rt = init_runtime(cfg.device, cfg.precision)
    with contextlib.ExitStack() as stack:
        stack.callback(shutdown, rt)
        logger = None
        if track and rt.is_main:
            from productgen import tracking

            run_params = {"train": dataclasses.asdict(cfg), spec.section: dataclasses.asdict(getattr(params, spec.section)),
                          "data": {"resolution": ds.resolution, "channels": ds.channels, "classes": len(ds.classes),
                                   "train_images": len(images)}, "world_size": rt.world_size, "resume": resume}  # fmt: skip
            tags = {**tracking.lineage(ds.root, ds.content_hash), "task": task, "family": spec.family, "kind": "train",
                    "device": str(rt.device)}  # fmt: skip
            logger = stack.enter_context(tracking.run(f"productgen-{task}", f"train-{task}", run_params, tags))
        engine = Engine(cfg, rt, out)
        info = tasks.DatasetInfo(ds.resolution, ds.channels, list(ds.classes), str(ds.root), ds.content_hash)
        model = spec.build(params, engine, info)
        result = fit(model, engine, images, labels, resume=resume, show_progress=show_progress,
                     on_log=logger.log_step if logger else None, on_step=on_step)  # fmt: skip
        if rt.is_main:
            config = {**model.config(), "step": result.step, "dataset": {"path": str(ds.root), "content_hash": ds.content_hash},
                      "train": dataclasses.asdict(cfg), "mlflow_run_id": logger.run_id if logger else None}  # fmt: skip
            save_model(out / "model", model.export(engine), config)
            loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
            losses_csv(out / "metrics.jsonl", out / "losses.csv")
        if logger is not None:
            import mlflow

            from productgen import tracking

            for name in ("loss_curve.png", "metrics.jsonl", "train_config.json"):
                if (out / name).is_file():
                    mlflow.log_artifact(str(out / name))
            mlflow.log_artifacts(str(out / "samples"), artifact_path="samples")
            mlflow.log_artifacts(str(out / "model"), artifact_path="weights")
            result.model_uri = tracking.log_trained_model(out / "model", register)
            result.run_id = logger.run_id
            from productgen import atomic

            atomic.write_json(out / "mlflow.json", {"run_id": logger.run_id, "model_uri": result.model_uri,
                                                    "tracking_uri": tracking.tracking_uri()})  # fmt: skip
        return result
