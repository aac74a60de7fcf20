"""``productgen train``: the lifecycle step that turns a prepared dataset into a trained model folder.

    out/
      checkpoints/ckpt-NNNNNNNN.safetensors   complete, checksummed state for --resume
      samples/step-NNNNNNN.png                EMA-generator grids (one row per category)
      metrics.jsonl                           losses, discriminator accuracy, images/s per log step
      loss_curve.png
      model/<module>.safetensors + config.json   what the task exports (the GAN: EMA generator, discriminator)

Every model family trains through this one function; the task name picks a builder from
:mod:`productgen.tasks`.

Faults (docs/reliability.md): one writer per run folder (:mod:`productgen.common.locks`; a second ``train`` into the
same ``--out`` stops in one line naming the holder's PID); ``model/`` is written into a staging folder and
swapped in as a whole, never with NaN/inf weights; the tracking server can neither stop the weights from being
written nor block the loop (:mod:`productgen.tracking.runs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from productgen.common.errors import UserError
from productgen.config import Params


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE) (Linux); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(staging: Path, target: Path) -> Path:
    """Put the complete folder ``staging`` in place of ``target`` in one rename, so a reader or a crash sees the
    old folder or the new one, never files of both (the old one is deleted afterwards)."""
    from productgen.common import atomic

    if not target.exists():
        os.replace(staging, target)
    elif _exchange(staging, target):
        shutil.rmtree(staging)  # it now holds the old folder
    else:  # two renames; a crash between them leaves no model/ but both folders, removed by the next run
        atomic.replace_dir(staging, target)
    return target


def write_model(folder: Path, weights: dict[str, Any], config: dict[str, Any]) -> Path:
    """``save_model`` into ``.model.staging-<pid>`` beside ``folder``, checked finite, then swapped in."""
    import torch

    from productgen.models.io import save_model
    from productgen.training.engine import TrainingDiverged

    for name, module in weights.items():
        for key, t in module.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise TrainingDiverged(
                    f"{name}.{key} of the trained model holds NaN/inf values; {folder} was not "
                    "written (lower the learning rates and train again)"
                )
    staging = folder.with_name(f".{folder.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        save_model(staging, weights, config)
        return swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def train(
    params: Params,
    task: str = "gan",
    resume: bool = False,
    show_progress: bool = True,
    track: bool = False,
    register: str | None = None,
    on_step: Callable[[int, Any, Any], None] | None = None,
) -> Any:
    """Train ``task``; with ``track``, log params, per-step losses, artifacts, lineage and the model to MLflow.

    ``on_step(step, engine, task)`` is passed to :func:`productgen.training.engine.fit` (the tuner's hook for
    intermediate evaluations and pruning).
    """
    from productgen import tasks
    from productgen.common.locks import folder_lock
    from productgen.common.plots import loss_curve, losses_csv
    from productgen.data.dataset import PreparedDataset
    from productgen.training.device import init_runtime, shutdown
    from productgen.training.engine import Engine, fit

    spec = tasks.get(task)
    cfg = params.train
    out = Path(cfg.out_for(task))
    main = int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as stack:
        if main:  # one writer per run folder, before anything is read or written (other ranks follow rank 0)
            if out.exists() and not out.is_dir():
                raise UserError(f"{out}: is a file, not a run folder; choose another --out (train.out)")
            stack.enter_context(folder_lock(out, "the training run"))
            if track:  # an unreachable server: one line now, before the dataset is even loaded
                from productgen.tracking import runs as tracking

                tracking.check_server(tracking.tracking_uri())
        ds = PreparedDataset(cfg.prepared or params.data.out)
        images, labels = ds.tensors(cfg.split)
        if len(images) < cfg.batch_size:
            raise UserError(
                f"{ds.root}: the {cfg.split} split has {len(images)} images, fewer than train.batch_size={cfg.batch_size}"
            )
        rt = init_runtime(cfg.device, cfg.precision)
        stack.callback(shutdown, rt)
        logger = None
        if track and rt.is_main:
            from productgen.tracking import runs as tracking

            run_params = {
                "train": dataclasses.asdict(cfg),
                spec.section: dataclasses.asdict(getattr(params, spec.section)),
                "data": {
                    "resolution": ds.resolution,
                    "channels": ds.channels,
                    "classes": len(ds.classes),
                    "train_images": len(images),
                },
                "world_size": rt.world_size,
                "resume": resume,
            }
            tags = {
                **tracking.lineage(ds.root, ds.content_hash),
                "task": task,
                "family": spec.family,
                "kind": "train",
                "device": str(rt.device),
            }
            logger = stack.enter_context(tracking.run(f"productgen-{task}", f"train-{task}", run_params, tags))
        engine = Engine(cfg, rt, out)
        info = tasks.DatasetInfo(ds.resolution, ds.channels, list(ds.classes), str(ds.root), ds.content_hash)
        model = spec.build(params, engine, info)
        result = fit(
            model,
            engine,
            images,
            labels,
            resume=resume,
            show_progress=show_progress,
            on_log=logger.log_step if logger else None,
            on_step=on_step,
        )
        if rt.is_main:
            config = {
                **model.config(),
                "step": result.step,
                "dataset": {"path": str(ds.root), "content_hash": ds.content_hash},
                "train": dataclasses.asdict(cfg),
                "mlflow_run_id": logger.run_id if logger else None,
            }
            write_model(out / "model", model.export(engine), config)
            loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
            losses_csv(out / "metrics.jsonl", out / "losses.csv")
        if logger is not None:
            _finish_tracking(logger, out, register, result)
        return result


def _finish_tracking(logger: Any, out: Path, register: str | None, result: Any) -> None:
    """Artifacts and the model to MLflow, after the weights are on disk; a server that went away is one line."""
    import mlflow

    from productgen.common import atomic
    from productgen.tracking import runs as tracking
    from productgen.training.engine import warn

    logger.close(timeout=2.0 if logger.down else 10.0)
    again = (
        f"every step is in {out / 'metrics.jsonl'} and the weights are in {out / 'model'}; once the server "
        "answers, run the same command with --resume to log the model (no further training)"
    )
    if logger.down:
        raise tracking.TrackingIncomplete(
            f"tracking incomplete: {logger.report()}; the artifacts and the model were not logged; {again}"
        )
    try:
        for name in ("loss_curve.png", "metrics.jsonl", "train_config.json"):
            if (out / name).is_file():
                mlflow.log_artifact(str(out / name))
        mlflow.log_artifacts(str(out / "samples"), artifact_path="samples")
        mlflow.log_artifacts(str(out / "model"), artifact_path="weights")
        result.model_uri = tracking.log_trained_model(out / "model", register)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the server or store did, the weights are safe
        raise tracking.TrackingIncomplete(
            f"tracking incomplete: MLflow {tracking.display_uri(logger.uri)} failed "
            f"while logging the artifacts and model ({tracking._first_line(err)}); "
            f"{again}"
        ) from None
    result.run_id = logger.run_id
    atomic.write_json(
        out / "mlflow.json",
        {
            "run_id": logger.run_id,
            "model_uri": result.model_uri,
            "tracking_uri": tracking.display_uri(tracking.tracking_uri()),
        },
    )
    note = logger.report()
    if note:
        warn(f"warning: {note}")
