"""One evaluator per task family, behind one signature, so the CLI, the DVC stages, the retrain flow and the
promotion gate score any model folder of a task the same way (the task registry names each task's evaluator).

Signature: ``(params, task, model_dir, prepared, out, categories, show_progress) -> metrics``. ``categories``
restricts the evaluation set to those categories of the ``evaluate.split`` split (the gate scores a champion
that never saw this week's new categories on the ones it knows, and the challenger on the same ones). Every
evaluator returns ``per_category``: ``{category: {metric: value, ..., "n": images}}`` (empty where a task has no
meaningful per-category figure: CycleGAN translates one category into another, so its two domains are the
breakdown).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from productgen.config import Params


def _device(name: str) -> str:
    from productgen.training.device import pick_device

    return str(pick_device(name))


def generation(
    p: Params, task: str, model_dir: Path, prepared: Path, out: Path, categories: list[str] | None, show_progress: bool
) -> dict[str, Any]:
    """FID / KID against the held-out split (Lucic et al.'s protocol), per-category FID (KID for small ones)."""
    from productgen.evaluation.generation import evaluate

    cfg = dataclasses.replace(p.evaluate, model=str(model_dir), out=str(out))
    return evaluate(cfg, prepared, show_progress=show_progress, categories=categories)


def restoration(
    p: Params, task: str, model_dir: Path, prepared: Path, out: Path, categories: list[str] | None, show_progress: bool
) -> dict[str, Any]:
    """PSNR / SSIM against the clean images, next to the degraded input (the baseline), overall and per category."""
    from productgen.evaluation.restoration import evaluate_restoration

    e = p.evaluate
    return evaluate_restoration(
        model_dir,
        prepared,
        split=e.split,
        views_cfg=p.views,
        out=out,
        max_images=e.max_real,
        batch_size=e.batch_size,
        device=_device(e.device),
        show_progress=show_progress,
        categories=categories,
    )


def translation(
    p: Params, task: str, model_dir: Path, prepared: Path, out: Path, categories: list[str] | None, show_progress: bool
) -> dict[str, Any]:
    """pix2pix: PSNR / SSIM / FID against the paired ground truth (per category); CycleGAN: FID against the
    target domain next to the identity baseline."""
    from productgen.evaluation.translation import evaluate_translation

    e = p.evaluate
    return evaluate_translation(
        model_dir,
        prepared,
        split=e.split,
        views_cfg=p.views,
        out=out,
        max_images=e.max_real,
        extractor=e.extractor,
        batch_size=e.batch_size,
        device=_device(e.device),
        seed=e.seed,
        show_progress=show_progress,
        categories=categories,
        kid_subset_size=e.kid_subset_size if e.kid else None,
    )


def style(
    p: Params, task: str, model_dir: Path, prepared: Path, out: Path, categories: list[str] | None, show_progress: bool
) -> dict[str, Any]:
    """Style distance to ``style.style_image`` and content preservation on a seeded sample of the split.

    The products are shown to the model as it trained on them (upscaled to its ``style.image_size``, inverted
    to dark-on-white where the dataset stores negatives), and content SSIM is measured against that image:
    scoring raw 28 px negatives measured a model on inputs it never saw and a mask that finds no background.
    """
    import torch

    from productgen.common.images import to_uint8
    from productgen.data.dataset import PreparedDataset
    from productgen.evaluation.categories import category_mask
    from productgen.evaluation.style import style_report
    from productgen.models.predict import load_predictor
    from productgen.models.styles import content_batch

    e = p.evaluate
    ds = PreparedDataset(prepared)
    images, labels = ds.tensors(e.split)
    keep = category_mask(ds.classes, labels, categories)
    images, labels = images[keep], labels[keep]
    n = min(len(images), e.max_real or 64)
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(e.seed))[:n].sort().values
    device = _device(e.device)
    predictor = load_predictor(model_dir, device)
    size = int(predictor.config.get("style", {}).get("image_size", p.style.image_size))
    invert = bool(predictor.config.get("invert_content", False))
    content = to_uint8(content_batch(images[pick], size, invert), low=0.0)
    m = style_report(
        predictor,
        content,
        p.style.style_image,
        out,
        device=device,
        labels=labels[pick],
        classes=ds.classes,
        notes={"content_size": size, "content_inverted": invert},
    )
    return {**m, "categories": sorted(categories)} if categories is not None else m
