"""Image grids people look at: dataset previews, paired before/after views, and later sample grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def to_nhwc(images: np.ndarray) -> np.ndarray:
    """Accept ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` uint8 and return ``[N, H, W, 3]``."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.shape[1] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr.astype(np.uint8, copy=False)


def make_grid(
    images: np.ndarray,
    ncol: int = 8,
    pad: int = 2,
    scale: int = 1,
    row_labels: list[str] | None = None,
    background: int = 128,
) -> Image.Image:
    """Tile images row-major into one picture; optional text labels on the left of each row."""
    arr = to_nhwc(images)
    n, h, w, _ = arr.shape
    ncol = max(1, min(ncol, n))
    nrow = (n + ncol - 1) // ncol
    canvas = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), background, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = arr[i]
    grid = Image.fromarray(canvas)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    if not row_labels:
        return grid
    label_w = 6 * max(len(s) for s in row_labels) + 8
    labelled = Image.new("RGB", (grid.width + label_w, grid.height), (background,) * 3)
    labelled.paste(grid, (label_w, 0))
    draw = ImageDraw.Draw(labelled)
    for r, text in enumerate(row_labels[:nrow]):
        draw.text((4, (pad + r * (h + pad)) * scale + (h * scale) // 2 - 5), text, fill=(255, 255, 255))
    return labelled


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PNG atomically so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
