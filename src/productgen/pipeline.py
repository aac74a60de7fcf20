"""The lifecycle steps with their MLOps side effects, shared by the CLI, the Prefect flows and the DVC stages.

Each function is one step, implemented once: the core functions (prepare, validate, train, evaluate) plus
MLflow tracking and the registry. Nothing here is Prefect-specific; the flows in ``flows/`` wrap these.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from productgen.config import Params


def for_task(p: Params, task: str) -> Params:
    """``p`` with ``{task}`` in the train / evaluate folders filled in (artifacts/train/{task}/model, ...)."""
    e = p.evaluate
    return dataclasses.replace(p, train=dataclasses.replace(p.train, out=p.train.out_for(task)),
                               evaluate=dataclasses.replace(e, model=e.model.replace("{task}", task),
                                                            out=e.out.replace("{task}", task)))  # fmt: skip


def _device(name: str) -> str:
    from productgen.training.device import pick_device

    return str(pick_device(name))


def evaluate_task(p: Params, task: str = "gan", prepared: Path | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate ``p.evaluate.model`` with its family's protocol; write ``p.evaluate.out`` and return the metrics.

    generation (gan, vae): FID / KID against the held-out split; restoration (restore, vae-restore): PSNR / SSIM
    against the clean images, next to the degraded-input baseline; translation (pix2pix: PSNR / SSIM / FID
    against the paired ground truth; cyclegan: FID against the target domain); style (style, adain): style
    distance and content preservation on a seeded sample of the split, with ``style.style_image``.
    The primary metric of each task (what the registry compares) is ``registry.PRIMARY_METRIC[task]``.
    """
    from productgen.training.tasks import get

    get(task)
    p = for_task(p, task)
    data = Path(prepared or p.data.out)
    e = p.evaluate
    model, out = Path(e.model), Path(e.out)
    if task in ("gan", "vae"):
        from productgen.evaluate import evaluate

        return evaluate(e, data, show_progress=show_progress)
    if task in ("restore", "vae-restore"):
        from productgen.restoration import evaluate_restoration

        return evaluate_restoration(model, data, split=e.split, views_cfg=p.views, out=out, max_images=e.max_real,
                                    batch_size=e.batch_size, device=_device(e.device), show_progress=show_progress)  # fmt: skip
    if task in ("pix2pix", "cyclegan"):
        from productgen.translation import evaluate_translation

        return evaluate_translation(model, data, split=e.split, views_cfg=p.views, out=out, max_images=e.max_real,
                                    extractor=e.extractor, batch_size=e.batch_size, device=_device(e.device),
                                    seed=e.seed, show_progress=show_progress)  # fmt: skip
    import torch

    from productgen.data.dataset import PreparedDataset
    from productgen.models.predict import load_predictor
    from productgen.styles import style_report

    images, _ = PreparedDataset(data).tensors(e.split)
    n = min(len(images), e.max_real or 64)
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(e.seed))[:n].sort().values
    device = _device(e.device)
    return style_report(load_predictor(model, device), images[pick], p.style.style_image, out, device=device)


def evaluate_model(p: Params, prepared: Path | None = None, track: bool = True, show_progress: bool = True,
                   task: str = "gan") -> dict[str, Any]:  # fmt: skip
    """Evaluate ``p.evaluate.model``; with ``track``, as an MLflow evaluation run linked to its training run."""
    import contextlib

    p = for_task(p, task)
    data = prepared or Path(p.data.out)
    with contextlib.ExitStack() as stack:
        run_id = None
        if track:
            from productgen import tracking
            from productgen.data.dataset import PreparedDataset
            from productgen.models.io import read_config

            ds = PreparedDataset(data, verify=False)
            mcfg = read_config(Path(p.evaluate.model))
            tags = {**tracking.lineage(ds.root, ds.content_hash), "task": task, "kind": "evaluate",
                    "model.path": p.evaluate.model, "model.trained_by_run": str(mcfg.get("mlflow_run_id"))}  # fmt: skip
            logger = stack.enter_context(
                tracking.run(f"productgen-{task}", f"evaluate-{task}", {"evaluate": dataclasses.asdict(p.evaluate)}, tags)
            )
            run_id = logger.run_id
        m = evaluate_task(p, task, data, show_progress=show_progress)
        if track:
            import mlflow

            flat = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            flat |= {f"fid_{k.replace(' ', '_')}": v for k, v in m.get("fid_per_category", {}).items()}
            mlflow.log_metrics(flat)
            mlflow.log_artifacts(p.evaluate.out)
    return {**m, "mlflow_run_id": run_id}
