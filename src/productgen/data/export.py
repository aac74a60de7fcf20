"""Write one view of a prepared split as image files: a folder to try ``enhance`` / ``translate`` / ``stylize`` on.

A new user has no folder of noisy or low-resolution seller photos at hand; the built-in dataset's deterministic
views (the same ones the evaluation reports use) give them one, with the category in each file name, and the clean
originals beside them when asked, so a before/after comparison needs nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from productgen.apply import write_png
from productgen.config import ViewsConfig
from productgen.data.dataset import PreparedDataset
from productgen.data.views import make_view, view_kinds
from productgen.errors import UserError


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
