"""The lifecycle steps with their MLOps side effects, shared by the CLI, the Prefect flows and the DVC stages.

Each function is one step, implemented once: the core functions (prepare, validate, train, evaluate) plus
MLflow tracking and the registry. Nothing here is Prefect-specific; the flows in ``flows/`` wrap these.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from productgen.config import Params


def evaluate_model(p: Params, prepared: Path | None = None, track: bool = True, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate ``p.evaluate.model``; with ``track``, as an MLflow evaluation run linked to its training run."""
    import contextlib

    from productgen.evaluate import evaluate

    data = prepared or Path(p.data.out)
    with contextlib.ExitStack() as stack:
        run_id = None
        if track:
            from productgen import tracking
            from productgen.data.dataset import PreparedDataset
            from productgen.models.io import read_config

            ds = PreparedDataset(data, verify=False)
            mcfg = read_config(Path(p.evaluate.model))
            tags = {**tracking.lineage(ds.root, ds.content_hash), "task": "gan", "kind": "evaluate",
                    "model.path": p.evaluate.model, "model.trained_by_run": str(mcfg.get("mlflow_run_id"))}  # fmt: skip
            logger = stack.enter_context(
                tracking.run("productgen-gan", "evaluate-gan", {"evaluate": dataclasses.asdict(p.evaluate)}, tags)
            )
            run_id = logger.run_id
        m = evaluate(p.evaluate, data, show_progress=show_progress)
        if track:
            import mlflow

            flat = {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}
            flat |= {f"fid_{k.replace(' ', '_')}": v for k, v in m.get("fid_per_category", {}).items()}
            mlflow.log_metrics(flat)
            mlflow.log_artifacts(p.evaluate.out)
    return {**m, "mlflow_run_id": run_id}
