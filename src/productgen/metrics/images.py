"""Image inputs for the metrics: folders of files, uint8 tensors, or any iterable of uint8 batches.

Everything becomes a stream of uint8 ``[n, C, H, W]`` tensors (C = 1 or 3), which is what the extractors take.
Folder images are decoded with PIL and converted to RGB with ``Image.convert("RGB")``, as pytorch-fid and
StyleGAN do (no EXIF rotation, alpha dropped), so FIDs of generated PNGs compare with theirs. Images in a folder
may differ in size: a batch is split into runs of equal size, which changes nothing in the result because the
extractors treat every image independently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from productgen.common.errors import UserError
from productgen.common.images import list_images

ImageSource = str | Path | torch.Tensor | np.ndarray | Iterable[torch.Tensor]


def load_image(path: Path) -> np.ndarray:
    """One image file as uint8 RGB ``[H, W, 3]``; an unreadable file is a :class:`UserError` naming it."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: cannot read image ({reason})") from None


def _same_size_runs(images: list[np.ndarray]) -> Iterator[torch.Tensor]:
    start = 0
    for i in range(1, len(images) + 1):
        if i == len(images) or images[i].shape != images[start].shape:
            yield torch.from_numpy(np.stack(images[start:i])).permute(0, 3, 1, 2).contiguous()
            start = i


def iter_files(paths: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    """Decode ``paths`` ``batch_size`` at a time into uint8 ``[n, 3, H, W]`` tensors."""
    for i in range(0, len(paths), batch_size):
        yield from _same_size_runs([load_image(p) for p in paths[i : i + batch_size]])


def as_tensor_batch(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A uint8 ``[N, C, H, W]`` tensor (C = 1 or 3) from a tensor or numpy array, checked."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected uint8 image batches as tensors, got {type(x).__name__}")
    if t.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got {t.dtype} (convert with productgen.metrics.to_uint8)")
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C = 1 or 3, got shape {tuple(t.shape)}")
    return t


def count_images(source: ImageSource) -> int | None:
    """Number of images in ``source`` when known up front (for progress bars), else None."""
    if isinstance(source, (str, Path)):
        return len(list_images(source))
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return int(source.shape[0])
    return None


def iter_batches(source: ImageSource, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 ``[n, C, H, W]`` batches of at most ``batch_size`` images from a folder, a tensor or an iterable."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1 (got {batch_size})")
    if isinstance(source, (str, Path)):
        yield from iter_files(list_images(source), batch_size)
        return
    batches: Iterable[torch.Tensor | np.ndarray]
    batches = [source] if isinstance(source, (torch.Tensor, np.ndarray)) else source
    for batch in batches:
        t = as_tensor_batch(batch)
        for i in range(0, len(t), batch_size):
            yield t[i : i + batch_size]
