"""The lifecycle steps with their MLOps side effects, shared by the CLI, the Prefect flows and the DVC stages.

Each function is one step, implemented once: the core functions (prepare, validate, train, evaluate) plus
MLflow tracking and the registry. Nothing here is Prefect-specific; the flows in ``flows/`` wrap these.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from productgen.config import Params


def for_task(p: Params, task: str) -> Params:
    """``p`` with ``{task}`` in the train / evaluate folders filled in (artifacts/train/{task}/model, ...)."""
    e = p.evaluate
    return dataclasses.replace(
        p,
        train=dataclasses.replace(p.train, out=p.train.out_for(task)),
        evaluate=dataclasses.replace(e, model=e.model.replace("{task}", task), out=e.out.replace("{task}", task)),
    )


def evaluate_task(
    p: Params,
    task: str = "gan",
    prepared: Path | None = None,
    show_progress: bool = True,
    categories: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``p.evaluate.model`` with its task's evaluator (the task registry's entry); write
    ``p.evaluate.out`` and return the metrics, ``per_category`` included."""
    from productgen.tasks import get

    spec = get(task)
    p = for_task(p, task)
    return spec.evaluate(
        p, Path(p.evaluate.model), Path(prepared or p.data.out), Path(p.evaluate.out), categories, show_progress
    )


def evaluate_model(
    p: Params, prepared: Path | None = None, track: bool = True, show_progress: bool = True, task: str = "gan"
) -> dict[str, Any]:
    """Evaluate ``p.evaluate.model``; with ``track``, as an MLflow evaluation run linked to its training run."""
    import contextlib

    p = for_task(p, task)
    data = prepared or Path(p.data.out)
    with contextlib.ExitStack() as stack:
        run_id = None
        if track:
            from productgen.data.dataset import PreparedDataset
            from productgen.models.io import read_config
            from productgen.tracking import runs as tracking

            ds = PreparedDataset(data, verify=False)
            mcfg = read_config(Path(p.evaluate.model))
            tags = {
                **tracking.lineage(ds.root, ds.content_hash),
                "task": task,
                "kind": "evaluate",
                "model.path": p.evaluate.model,
                "model.trained_by_run": str(mcfg.get("mlflow_run_id")),
            }
            logger = stack.enter_context(
                tracking.run(
                    f"productgen-{task}", f"evaluate-{task}", {"evaluate": dataclasses.asdict(p.evaluate)}, tags
                )
            )
            run_id = logger.run_id
        m = evaluate_task(p, task, data, show_progress=show_progress)
        if track:
            import mlflow

            flat = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            flat |= {f"fid_{k.replace(' ', '_')}": v for k, v in m.get("fid_per_category", {}).items()}
            flat |= {
                f"cat.{re.sub(r'[^0-9A-Za-z_.-]', '_', c)}.{k}": float(v)
                for c, vals in m.get("per_category", {}).items()
                for k, v in vals.items()
            }
            mlflow.log_metrics(flat)
            mlflow.log_artifacts(p.evaluate.out)
    return {**m, "mlflow_run_id": run_id}
