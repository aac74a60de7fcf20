"""What each page computes, as plain functions over a loaded champion: the same code paths as the CLI.

Generation is :func:`productgen.apply.generation.sample` (what ``productgen generate`` runs); image models go through
:mod:`productgen.apply.folders` (what ``enhance`` / ``stylize`` / ``translate`` run, including its handling of sizes);
uploads are decoded by :func:`productgen.apply.folders.read_image_bytes`, i.e. :func:`productgen.data.decode.decode`
with the ``data.max_pixels`` decompression-bomb guard and the mode handling of ``productgen data``.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np

from productgen.common.errors import UserError
from productgen.web.results import Item

MAX_GENERATE = 64


@dataclass
class Upload:
    """An uploaded file: the name the browser gave (a folder upload includes relative folders) and its bytes."""

    name: str
    data: bytes


@dataclass
class Decoded:
    name: str  # safe relative path, as given
    array: np.ndarray  # uint8 HWC


def safe_name(raw: str, index: int) -> str:
    """A relative POSIX path from a browser-supplied file name: no absolute paths, no '..', no odd characters."""
    parts = []
    for part in raw.replace("\\", "/").split("/"):
        part = "".join(ch for ch in part if ch.isprintable() and ch not in '<>:"|?*').strip()
        if part in ("", ".", ".."):
            continue
        parts.append(part[:120])
    return posixpath.join(*parts[-8:]) if parts else f"upload-{index:03d}"


def png_bytes(array: np.ndarray) -> bytes:
    """HWC (or HW1) uint8 -> PNG bytes."""
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def output_name(name: str) -> str:
    """The download name of a result: the input's relative path with a .png suffix (as the CLI writes it)."""
    stem, _ = posixpath.splitext(name)
    return f"{stem or name}.png"


def decode_uploads(
    uploads: list[Upload], channels: int, max_pixels: int, max_side: int | None = None, refuse_side: int | None = None
) -> tuple[list[Decoded], list[tuple[str, str]]]:
    """Decode every upload by its content (never its extension); bad files become (name, reason), never errors."""
    from productgen.apply.folders import read_image_bytes

    good: list[Decoded] = []
    bad: list[tuple[str, str]] = []
    for up in uploads:
        try:
            arr = read_image_bytes(up.data, channels, max_pixels, max_side)
        except ValueError as err:
            bad.append((up.name, str(err)))
            continue
        if refuse_side is not None and max(arr.shape[:2]) > refuse_side:
            bad.append(
                (
                    up.name,
                    f"{arr.shape[1]}x{arr.shape[0]} px is over the {refuse_side} px limit of this page "
                    "(web.max_side); resize it first",
                )
            )
            continue
        good.append(Decoded(up.name, arr))
    return good, bad


def generate_arrays(champion: Any, category: str, count: int, seed: int) -> tuple[str, np.ndarray]:
    """The category's name and ``count`` new images ``[N, H, W, 3]`` uint8 of it from a generator (same inputs,
    same pixels: the review compares two models on the very same seeds)."""
    import torch

    from productgen.apply.generation import resolve_categories, sample
    from productgen.common.grids import to_nhwc

    if not 1 <= count <= MAX_GENERATE:
        raise UserError(f"count: {count} is outside 1..{MAX_GENERATE}")
    if seed < 0 or seed > 2**63 - 1:
        raise UserError(f"seed: {seed} must be a whole number from 0")
    net, cfg = champion.model
    (label,) = resolve_categories([category], champion.classes)
    device = next(net.parameters()).device
    labels = torch.full((count,), label, dtype=torch.long, device=device)
    return champion.classes[label], to_nhwc(sample(net, int(cfg["gan"]["z_dim"]), labels, seed))


def generate_items(champion: Any, category: str, count: int, seed: int) -> list[Item]:
    """``count`` new images of ``category`` from a generation champion (same inputs, same bytes)."""
    cat, images = generate_arrays(champion, category, count, seed)
    return [
        Item(f"{cat}/{cat}-seed{seed}-{i:02d}.png", png_bytes(img), width=img.shape[1], height=img.shape[0])
        for i, img in enumerate(images)
    ]


def apply_model(
    predictor: Any, arrays: list[np.ndarray], batch_size: int = 8, **options: Any
) -> list[np.ndarray | str]:
    """Run an image -> image predictor over arrays of any sizes, in input order, the way ``apply_to_folder``
    does: equal sizes batched as far as the memory budget allows, an image too large for one pass in tiles
    (:func:`productgen.apply.folders.predict_image`); an image that cannot be processed becomes its one-line reason."""
    import torch

    from productgen.apply import folders as apply

    budget = apply.DEFAULT_MEMORY_MB * 1024 * 1024
    out: list[np.ndarray | str | None] = [None] * len(arrays)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    with torch.inference_mode():
        for shape, indices in groups.items():
            per_image = shape[0] * shape[1] * apply.bytes_per_pixel(predictor, **options)
            fit = max(1, min(batch_size, int(budget // per_image)))
            for k in range(0, len(indices), fit):
                chunk = indices[k : k + fit]
                try:
                    if per_image <= budget:
                        results = apply.run_batch(predictor, [arrays[i] for i in chunk], "cpu", **options)
                    else:
                        results = [apply.predict_image(predictor, arrays[chunk[0]], "cpu", **options)]
                except apply.TileError as err:
                    results = [str(err)] * len(chunk)
                except (MemoryError, RuntimeError) as err:
                    if not apply._is_out_of_memory(err):
                        raise
                    results = [f"out of memory at {shape[1]}x{shape[0]} px; send a smaller image"] * len(chunk)
                for i, r in zip(chunk, results, strict=True):
                    out[i] = r
    return [o if o is not None else "not processed" for o in out]


def image_items(predictor: Any, decoded: list[Decoded], **options: Any) -> tuple[list[Item], list[tuple[str, str]]]:
    """Apply ``predictor``; every output paired with its (decoded) input for the before/after view, and the
    images that could not be processed with their reasons."""
    outputs = apply_model(predictor, [d.array for d in decoded], **options)
    items, failed = [], []
    for d, o in zip(decoded, outputs, strict=True):
        if isinstance(o, str):
            failed.append((d.name, o))
        else:
            items.append(Item(output_name(d.name), png_bytes(o), png_bytes(d.array), o.shape[1], o.shape[0]))
    return items, failed


def edges_of(arrays: list[np.ndarray], threshold: float) -> list[np.ndarray]:
    """The edges view (dark Sobel edges on white, the pix2pix training input) of catalog photos."""
    import torch

    from productgen.data.views import edges

    out = []
    for a in arrays:
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
        out.append(edges(x, threshold)[0].permute(1, 2, 0).contiguous().numpy())
    return out


def style_array(style: str | None, upload: Upload | None, max_pixels: int) -> np.ndarray:
    """The style image for AdaIN: an uploaded JPEG/PNG (decoded safely) or a bundled style name."""
    from productgen.apply.folders import read_image_bytes
    from productgen.models.styles import BUILTIN_STYLES, load_style

    if upload is not None:
        try:
            return read_image_bytes(upload.data, 3, max_pixels, max_side=1024)
        except ValueError as err:
            raise UserError(f"style image {upload.name}: {err}") from None
    if not style or style not in BUILTIN_STYLES:
        raise UserError(f"style: choose one of the bundled styles ({', '.join(BUILTIN_STYLES)}) or upload one")
    return load_style(style)
