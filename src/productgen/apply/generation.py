"""``productgen generate``: new product images from a trained class-conditional generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from productgen.common.errors import UserError

MAX_IMAGES = 10_000


def resolve_categories(requested: list[str] | None, classes: list[str]) -> list[int]:
    """Category names (case-insensitive) or indices -> class indices; all classes when none are given."""
    if not requested:
        return list(range(len(classes)))
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    out = []
    for name in requested:
        key = name.strip().lower()
        if key in lookup:
            out.append(lookup[key])
        elif key.isdigit() and int(key) < len(classes):
            out.append(int(key))
        else:
            raise UserError(f"unknown category {name!r}; this model knows: {', '.join(classes)}")
    return out


@torch.no_grad()
def sample(net: torch.nn.Module, z_dim: int, labels: torch.Tensor, seed: int, batch: int = 500) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` images for ``labels``; the noise comes from ``seed`` alone, so it is repeatable."""
    from productgen.common.images import to_uint8

    device = labels.device
    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(len(labels), z_dim, generator=gen, device=device)
    parts = [to_uint8(net(z[i : i + batch], labels[i : i + batch])).cpu().numpy() for i in range(0, len(labels), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 1, 1, 1), np.uint8)


def generate(
    model_dir: Path, categories: list[str] | None, n: int, seed: int, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` images per category as uint8 ``[N, C, H, W]``, their labels, and the model's class names.

    The same (model, categories, n, seed) always gives the same images.
    """
    from productgen.models.io import load_generator

    if not 1 <= n <= MAX_IMAGES:
        raise UserError(f"--n must be between 1 and {MAX_IMAGES}")
    net, cfg = load_generator(model_dir, device)
    classes = list(cfg["classes"])
    labels = torch.tensor(resolve_categories(categories, classes), device=device).repeat_interleave(n)
    return sample(net, cfg["gan"]["z_dim"], labels, seed), labels.cpu().numpy(), classes


def save_images(images: np.ndarray, labels: np.ndarray, classes: list[str], folder: Path) -> int:
    """One PNG per image, ``<category>/<index>.png``."""
    from PIL import Image

    from productgen.common.grids import save_png, to_nhwc

    arr = to_nhwc(images)
    for i, (img, y) in enumerate(zip(arr, labels, strict=True)):
        pil = Image.fromarray(img[..., 0]) if images.shape[1] == 1 else Image.fromarray(img)
        save_png(pil, folder / classes[int(y)] / f"{i:05d}.png")
    return len(arr)
