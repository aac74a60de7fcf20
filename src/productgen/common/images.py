"""The one float -> uint8 image conversion and the one image-folder listing every stage uses.

:func:`to_uint8` rounds half to even (``torch.round``): ``v = (x - low) * 255 / (high - low)``, rounded to the
nearest integer (ties to the even one) and clamped to [0, 255]. For the generator range [-1, 1] this is
``(x + 1) * 127.5``; it differs from StyleGAN's ``x * 127.5 + 128`` truncated (round half up) only on exact
ties of even integers, which float outputs of a network practically never hit.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from productgen.common.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def to_uint8(images: torch.Tensor, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """Float images in ``[low, high]`` (default [-1, 1], generator and restorer outputs; [0, 1] with ``low=0.0,
    high=1.0``) to uint8, rounded half to even and clamped, on the same device."""
    return images.detach().float().sub(low).mul(255.0 / (high - low)).round().clamp(0, 255).to(torch.uint8)


def list_images(folder: str | Path) -> list[Path]:
    """Image files (PNG, JPEG, WebP, any case) under ``folder``, recursively, in sorted order (a folder's files,
    then its sub-folders).

    Symlinked folders are not followed (no loops); a folder with no images is a :class:`UserError`.
    """
    root = Path(folder).expanduser()
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (give a folder of PNG, JPEG or WebP images)")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                found.append(p)
    if not found:
        raise UserError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files, recursively)")
    return found
