"""Evaluation of restoration models (``restore``, ``vae-restore``) on the deterministic test views.

Each model is scored against the trivial baseline of returning the degraded input unchanged (for ``sr<k>`` that
is bicubic upscaling), on exactly the pairs :func:`productgen.data.views.make_view` makes for the split, so the
baseline numbers equal the README's anchors and any two models are compared on the same images. The primary
metric for the registry gate is ``psnr`` (higher is better; the task registry says so); ``gain_db`` is PSNR above
the baseline. Every figure is also reported per category (``per_category``), which the gate checks one by one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from productgen.common import atomic
from productgen.common.errors import UserError
from productgen.config import ViewsConfig


def subset_indices(n: int, max_images: int | None, seed: int) -> torch.Tensor:
    """All indices, or a seeded sorted subset of ``max_images`` of them (the same on every machine)."""
    if max_images is None or max_images >= n:
        return torch.arange(n)
    if max_images < 1:
        raise UserError(f"max_images: {max_images} must be at least 1")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:max_images].sort().values


def evaluate_restoration(
    model_dir: Path,
    prepared: str | Path,
    split: str = "test",
    views_cfg: ViewsConfig | None = None,
    out: Path = Path("artifacts/eval/restore"),
    max_images: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    show_progress: bool = True,
    categories: list[str] | None = None,
) -> dict[str, Any]:
    """PSNR / SSIM of the model and of the degraded input on the ``split`` views; writes metrics.json,
    report.md and before_after.png (rows degraded / restored / clean) to ``out``; returns the metrics."""
    from productgen.common.grids import make_grid, save_png
    from productgen.common.progress import progress
    from productgen.data.dataset import PreparedDataset
    from productgen.data.views import make_view
    from productgen.metrics.quality import psnr, ssim
    from productgen.models.predict import load_predictor

    views_cfg = views_cfg or ViewsConfig()
    model_dir, out = Path(model_dir), Path(out)
    if batch_size < 1:
        raise UserError(f"batch_size: {batch_size} must be at least 1")
    predictor = load_predictor(model_dir, device)
    view = getattr(predictor, "view", None)
    if view is None or not hasattr(predictor, "restore"):
        raise UserError(f"{model_dir}: a {predictor.config.get('model')!r} model is not a restoration model")
    ds = PreparedDataset(prepared)
    if ds.channels != predictor.channels:
        raise UserError(
            f"{model_dir}: the model takes {predictor.channels}-channel images but {ds.root} has "
            f"{ds.channels}; evaluate on a dataset prepared in the model's mode"
        )
    from productgen.evaluation.categories import category_mask, group_by_category

    images, labels = ds.tensors(split)
    if len(images) == 0:
        raise UserError(f"{ds.root}: the {split} split is empty; choose another split")
    # Views are keyed by an image's index in its split, so a category subset keeps the indices of the full split.
    chosen = torch.nonzero(category_mask(ds.classes, labels, categories)).flatten()
    if len(chosen) == 0:
        raise UserError(f"{ds.root}: the {split} split has no images of {', '.join(categories or [])}")
    indices = chosen[subset_indices(len(chosen), max_images, views_cfg.seed)]
    sums = {"psnr": 0.0, "ssim": 0.0, "baseline_psnr": 0.0, "baseline_ssim": 0.0}
    per_image: dict[str, list[torch.Tensor]] = {k: [] for k in sums}
    preview: list[torch.Tensor] = []
    starts = range(0, len(indices), batch_size)
    for start in progress(starts, desc=f"restore {view}", unit="batch", enabled=show_progress, total=len(starts)):
        idx = indices[start : start + batch_size]
        clean = images[idx]
        degraded = make_view(clean, view, views_cfg, idx)
        restored = predictor.restore(degraded)
        scores = {
            "psnr": psnr(restored, clean, per_image=True),
            "ssim": ssim(restored, clean, per_image=True),
            "baseline_psnr": psnr(degraded, clean, per_image=True),
            "baseline_ssim": ssim(degraded, clean, per_image=True),
        }
        for k, v in scores.items():
            sums[k] += float(v.double().sum())
            per_image[k].append(v)
        if not preview:
            preview = [degraded[:8], restored[:8], clean[:8]]
    n = len(indices)
    m: dict[str, Any] = {k: v / n for k, v in sums.items()}
    m["gain_db"] = m["psnr"] - m["baseline_psnr"]
    cat = {k: torch.cat(v) for k, v in per_image.items()}
    m["per_category"] = group_by_category(
        ds.classes, labels[indices], **cat, gain_db=cat["psnr"].double() - cat["baseline_psnr"].double()
    )
    if categories is not None:
        m["categories"] = sorted(categories)
    m.update(
        {
            "view": view,
            "images": n,
            "split": split,
            "model": predictor.config.get("model"),
            "model_dir": str(model_dir),
            "dataset": str(ds.root),
            "content_hash": ds.content_hash,
            "subset_seed": views_cfg.seed if n < len(chosen) else None,
            "views": {
                "blur_sigma": views_cfg.blur_sigma,
                "jpeg_quality": views_cfg.jpeg_quality,
                "seed": views_cfg.seed,
            },
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "metrics.json", m)
    grid = torch.cat(preview).numpy()
    k = len(preview[0])
    save_png(
        make_grid(grid, ncol=k, scale=max(1, 64 // grid.shape[-2]), row_labels=["degraded", "restored", "clean"]),
        out / "before_after.png",
    )
    atomic.write_text(out / "report.md", _report(m))
    return m


def _report(m: dict[str, Any]) -> str:
    subset = f" (seeded subset, seed {m['subset_seed']})" if m["subset_seed"] is not None else ""
    base = "bicubic upscaling" if str(m["view"]).startswith("sr") else "degraded input"
    return (
        f"# Restoration: {m['model']} on {m['view']}\n\n"
        f"{m['images']:,} images of the {m['split']} split{subset}, deterministic `{m['view']}` views.\n\n"
        "| | PSNR (dB) | SSIM |\n|---|---:|---:|\n"
        f"| model ({m['model']}) | {m['psnr']:.2f} | {m['ssim']:.4f} |\n"
        f"| baseline ({base}) | {m['baseline_psnr']:.2f} | {m['baseline_ssim']:.4f} |\n"
        f"| gain | {m['gain_db']:+.2f} | {m['ssim'] - m['baseline_ssim']:+.4f} |\n\n"
        "## Per category\n\n| category | images | PSNR (dB) | baseline | gain | SSIM |\n|---|---:|---:|---:|---:|---:|\n"
        + "".join(
            f"| {c} | {v['n']} | {v['psnr']:.2f} | {v['baseline_psnr']:.2f} | {v['gain_db']:+.2f} | {v['ssim']:.4f} |\n"
            for c, v in m["per_category"].items()
        )
        + "\n![before/after](before_after.png)\n\nRows: degraded, restored, clean.\n"
    )
