"""Apply an image -> image model to a folder of any size: the one loop behind ``productgen enhance``,
``stylize`` and ``translate``.

Users point it at a folder of catalog photos, so it must not stop at one bad file, must not touch the inputs
and must not lose work: unreadable files are reported and skipped, outputs keep the input's relative path and
stem (as PNG, so nothing is lost to re-compression), every output is written atomically, and an output folder
inside (or equal to) the input folder is refused so a second run never re-processes its own results.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from productgen.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class ApplyReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, one-line reason)
    pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # a few (before, after) HWC uint8


def list_images(in_dir: Path) -> list[Path]:
    """Image files under ``in_dir`` (recursively), sorted, skipping hidden files and symlinks leaving the folder."""
    root = in_dir.resolve()
    if not root.is_dir():
        raise UserError(f"{in_dir}: not a folder; pass --in a folder of images")
    files = []
    for path in sorted(root.rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            continue  # a symlink pointing outside the input folder
        files.append(path)
    return files


def check_out_dir(in_dir: Path, out_dir: Path) -> Path:
    src, dst = in_dir.resolve(), out_dir.resolve()
    if dst == src or dst.is_relative_to(src):
        raise UserError(f"{out_dir}: the output folder must not be the input folder or inside it; choose another --out")
    if src.is_relative_to(dst):
        raise UserError(f"{out_dir}: the output folder contains the input folder; choose another --out")
    return dst


def read_image(path: Path, channels: int, max_pixels: int = 50_000_000, max_side: int | None = None) -> np.ndarray:
    """Decode ``path`` safely into uint8 HWC (C = ``channels``); raise ``ValueError`` with a one-line reason."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read ({err.strerror or err})") from None
    return read_image_bytes(data, channels, max_pixels, max_side)


def read_image_bytes(data: bytes, channels: int, max_pixels: int = 50_000_000, max_side: int | None = None) -> np.ndarray:
    """Decode untrusted image bytes (JPEG/PNG/WebP) into uint8 HWC; ``ValueError`` with a one-line reason."""
    from productgen.data.decode import Rejected, decode

    try:
        decoded = decode(data, "L" if channels == 1 else "RGB", max_pixels)
    except Rejected as err:
        raise ValueError(str(err)) from None
    im = decoded.image
    if max_side is not None and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def write_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _batches(files: list[Path], read: Callable[[Path], np.ndarray], batch_size: int,
             report: ApplyReport) -> Iterator[list[tuple[Path, np.ndarray]]]:  # fmt: skip
    """Readable images grouped into batches of equal size (mixed sizes form separate batches)."""
    pending: dict[tuple[int, ...], list[tuple[Path, np.ndarray]]] = {}
    for path in files:
        try:
            arr = read(path)
        except ValueError as err:
            report.failed.append((path, str(err)))
            continue
        group = pending.setdefault(arr.shape, [])
        group.append((path, arr))
        if len(group) == batch_size:
            yield pending.pop(arr.shape)
    yield from (g for g in pending.values() if g)


def run_batch(predictor: Any, arrays: list[np.ndarray], device: torch.device | str = "cpu",
              **options: Any) -> list[np.ndarray]:  # fmt: skip
    """Pad a batch of equal-size HWC uint8 images to the model's multiple, run it, crop back; HWC uint8 out."""
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    h, w = x.shape[-2:]
    m = max(1, int(predictor.multiple))
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x.float(), (0, pw, 0, ph), mode=mode).round().to(torch.uint8)
    y = predictor(x.to(device), **options).cpu()
    s = int(predictor.scale)
    y = y[..., : h * s, : w * s]
    return list(y.permute(0, 2, 3, 1).contiguous().numpy())


def apply_to_folder(
    predictor: Any, in_dir: Path, out_dir: Path, batch_size: int = 16, max_side: int | None = None,
    device: torch.device | str = "cpu", show_progress: bool = True, keep_pairs: int = 8, **options: Any,
) -> ApplyReport:  # fmt: skip
    """Run ``predictor`` over every image under ``in_dir``; outputs ``out_dir/<relative path>/<stem>.png``."""
    from productgen.progress import progress

    if batch_size < 1:
        raise UserError(f"--batch-size: {batch_size} must be at least 1")
    files = list_images(in_dir)
    dst = check_out_dir(in_dir, out_dir)
    if not files:
        raise UserError(f"{in_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    root = in_dir.resolve()
    report = ApplyReport()
    channels = int(predictor.channels)
    bar = progress(range(len(files)), desc="images", unit="img", enabled=show_progress, total=len(files))
    bar_iter = iter(bar)
    read = lambda p: read_image(p, channels, max_side=max_side)  # noqa: E731
    n_done = 0
    with torch.inference_mode():
        for batch in _batches(files, read, batch_size, report):
            outputs = run_batch(predictor, [a for _, a in batch], device, **options)
            for (path, before), after in zip(batch, outputs, strict=True):
                target = dst / path.relative_to(root).with_suffix(".png")
                write_png(after, target)
                report.written.append(target)
                if len(report.pairs) < keep_pairs:
                    report.pairs.append((before, after))
            while n_done < len(report.written) + len(report.failed):
                next(bar_iter, None)
                n_done += 1
    while n_done < len(files):
        next(bar_iter, None)
        n_done += 1
    return report


def before_after_grid(pairs: list[tuple[np.ndarray, np.ndarray]], path: Path, size: int = 128) -> Path | None:
    """A two-row grid (inputs above, outputs below), each image fitted into ``size`` px, written atomically."""
    if not pairs:
        return None
    from productgen.viz import save_png

    def fit(a: np.ndarray) -> Image.Image:
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        return canvas

    grid = Image.new("RGB", (size * len(pairs) + 2 * (len(pairs) - 1), size * 2 + 2), (200, 200, 200))
    for i, (before, after) in enumerate(pairs):
        grid.paste(fit(before), (i * (size + 2), 0))
        grid.paste(fit(after), (i * (size + 2), size + 2))
    return save_png(grid, path)
