"""Write one view of a prepared split as image files: a folder to try ``enhance`` / ``translate`` / ``stylize`` on.

A new user has no folder of noisy or low-resolution seller photos at hand; the built-in dataset's deterministic
views (the same ones the evaluation reports use) give them one, with the category in each file name, and the clean
originals beside them when asked, so a before/after comparison needs nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from productgen.apply.folders import write_png
from productgen.common.errors import UserError
from productgen.config import ViewsConfig
from productgen.data.dataset import PreparedDataset
from productgen.data.views import make_view, view_kinds


def export_view(
    prepared: Path, split: str, kind: str, cfg: ViewsConfig, n: int, out: Path, with_clean: bool = False
) -> list[Path]:
    """Write the first ``n`` images of ``split`` as ``kind`` views to ``out/<kind>/`` (``00000-sneaker.png`` ...).

    ``kind`` is a view name (``noise25``, ``sr2``, ``edges``, ...) or ``clean``. ``with_clean`` also writes the
    originals to ``out/clean/`` (beside, not inside, so ``enhance --in out/<kind>`` sees only the degraded ones).
    The folders written must not hold files already: exporting never overwrites anything.
    """
    kinds = ["clean", *view_kinds(cfg)]
    if kind not in kinds:
        raise UserError(f"--view: unknown view {kind!r}; choose from {', '.join(kinds)}")
    if n < 1:
        raise UserError("--n: export at least one image")
    out = out.resolve()
    for folder in {out / kind, out / "clean"} if with_clean else {out / kind}:
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise UserError(f"{folder}: exists and is not empty; choose another --out (exports never overwrite)")
    ds = PreparedDataset(prepared)
    images, labels = ds.tensors(split)
    images, labels = images[:n], labels[:n]
    if len(images) == 0:
        raise UserError(f"{prepared}: the {split} split holds no images; export another --split")
    indices = torch.arange(len(images))
    view = images if kind == "clean" else make_view(images, kind, cfg, indices)
    classes = [re.sub(r"[^A-Za-z0-9_.-]+", "_", c) for c in ds.classes]  # category names from folders
    written = []
    for i, (img, label) in enumerate(zip(view, labels.tolist())):
        name = f"{i:05d}-{classes[label]}.png"
        written.append(out / kind / name)
        write_png(img.permute(1, 2, 0).numpy(), out / kind / name)
        if with_clean and kind != "clean":  # the view is the originals already
            write_png(images[i].permute(1, 2, 0).numpy(), out / "clean" / name)
    return written


def export_catalog(
    prepared: Path, split: str, categories: list[str] | None, per_category: int, skip: int, out: Path
) -> list[Path]:
    """Write a catalog folder (``out/<category>/<split>-NNNNN.png``, what ``data.source: folder`` reads) of the
    ``per_category`` images after the first ``skip`` of each category in ``split``.

    Why: the weekly loop needs a catalog that grows; exporting the next ``per_category`` images into the same
    folder each week gives a new user one from the built-in dataset. Files already there are never overwritten.
    """
    if per_category < 1 or skip < 0:
        raise UserError("--per-category must be at least 1 and --skip at least 0")
    ds = PreparedDataset(prepared)
    images, labels = ds.tensors(split)
    wanted = categories or ds.classes
    unknown = sorted(set(wanted) - set(ds.classes))
    if unknown:
        raise UserError(f"--categories: {', '.join(unknown)} not in {prepared} (it has {', '.join(ds.classes)})")
    out = out.resolve()
    written: list[Path] = []
    for cat in wanted:
        idx = torch.nonzero(labels == ds.classes.index(cat)).flatten()[skip : skip + per_category]
        if len(idx) == 0:
            raise UserError(f"{prepared}: the {split} split has no {cat!r} images after the first {skip}")
        folder = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", cat)
        for i in idx.tolist():
            path = folder / f"{split}-{i:05d}.png"
            if path.exists():
                raise UserError(f"{path}: exists; exports never overwrite (use another --skip or --out)")
            write_png(images[i].permute(1, 2, 0).numpy(), path)
            written.append(path)
    return written
