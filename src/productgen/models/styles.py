"""Style images, style-transfer losses and the product mask (the style report: :mod:`productgen.evaluation.style`).

Style images are either built-in names (photographs and textures bundled with scikit-image, read from its data
folder as plain files, so they work offline and nothing is downloaded) or a user's JPEG/PNG path, decoded with
the same safe decoder as every other user image (:func:`productgen.apply.folders.read_image`).

Content images are the prepared dataset's product images, upscaled to the training size and tiled to RGB.
Fashion-MNIST stores its photos negated (light product on black); they are inverted back so the networks learn
on what users will stylise: products on a white background.

Losses (Gatys et al.; Johnson et al.): content = feature MSE at one encoder level; style = MSE between Gram
matrices over levels (optionally restricted to the product mask); total variation for smoothness.
AdaIN (Huang & Belongie) uses channel means and standard deviations instead of Gram matrices.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from productgen.common.errors import UserError

# name -> file in scikit-image's bundled data folder (colourful or strongly textured images)
BUILTIN_STYLES: dict[str, str] = {
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "retina": "retina.jpg",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}


def style_names() -> list[str]:
    return list(BUILTIN_STYLES)


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise UserError(
            "built-in styles need scikit-image installed (pip install scikit-image); "
            "or pass a JPEG/PNG path as the style"
        )
    return Path(spec.origin).parent / "data"


def load_style(spec: str, max_side: int | None = 1024) -> np.ndarray:
    """A style image as uint8 RGB ``[H, W, 3]``: a built-in name or a JPEG/PNG path (long side <= ``max_side``)."""
    from productgen.apply.folders import read_image

    if spec in BUILTIN_STYLES:
        path = _skimage_data_dir() / BUILTIN_STYLES[spec]
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(
                f"style {spec!r}: neither a built-in style ({', '.join(BUILTIN_STYLES)}) nor an existing image file"
            )
    try:
        return read_image(path, 3, max_side=max_side)
    except ValueError as err:
        raise UserError(f"{path}: style image unreadable ({err})") from None


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float RGB in [0, 1] (grayscale tiled to three channels)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def resize_short(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` so the shorter side is ``size`` (antialiased when shrinking)."""
    h, w = x.shape[-2:]
    s = size / min(h, w)
    if s == 1:
        return x
    shape = (max(1, round(h * s)), max(1, round(w * s)))
    return F.interpolate(x, size=shape, mode="bicubic", antialias=s < 1, align_corners=False).clamp(0, 1)


def style_tensor(spec: str, size: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """A style image as float ``[1, 3, h, w]`` in [0, 1], shorter side ``size``."""
    arr = load_style(spec)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float().div(255.0)
    return resize_short(x, size).to(device)


def content_batch(images: torch.Tensor, size: int, invert: bool) -> torch.Tensor:
    """Prepared uint8 product images -> float RGB ``[N, 3, size, size]`` in [0, 1] (inverted when ``invert``)."""
    x = images.float() / 255.0
    if invert:
        x = 1.0 - x
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


# ---- the product mask -----------------------------------------------------------------------------------------


def product_mask(
    x: torch.Tensor, threshold: float = 0.94, dilate: int = 1, feather: float = 1.0, coarse: int = 64
) -> torch.Tensor:
    """Soft mask ``[N, 1, H, W]`` in [0, 1] of the product in RGB ``x`` in [0, 1] (1 = product).

    Background is the near-white pixels (every channel >= ``threshold``) *connected to the image border*, so
    white parts inside a product (a white sole, a logo) stay product. The connectivity is a geodesic flood fill
    on a grid of at most ``coarse`` cells per side (cheap at any resolution; a coarse cell is white only if all
    its pixels are), then intersected with the full-resolution near-white test. The product is dilated by
    ``dilate`` px and feathered with a Gaussian of sigma ``feather`` px so the seam does not show.
    """
    n, _, h, w = x.shape
    white = (x.amin(1, keepdim=True) >= threshold).float()
    f = max(1, math.ceil(max(h, w) / coarse))
    low = -F.max_pool2d(-white, f, f, ceil_mode=True) if f > 1 else white
    seed = torch.zeros_like(low)
    seed[..., 0, :], seed[..., -1, :] = low[..., 0, :], low[..., -1, :]
    seed[..., :, 0], seed[..., :, -1] = low[..., :, 0], low[..., :, -1]
    bg = seed
    for _ in range(0, low.shape[-1] * low.shape[-2], 8):  # converges long before this bound
        prev = bg
        for _ in range(8):
            bg = F.max_pool2d(bg, 3, 1, 1) * low
        if torch.equal(bg, prev):
            break
    if f > 1:
        bg = F.interpolate(bg, scale_factor=f, mode="nearest")[..., :h, :w] * white
    product = 1.0 - bg
    if dilate > 0:
        product = F.max_pool2d(product, 2 * dilate + 1, 1, dilate)
    if feather > 0:
        r = max(1, math.ceil(2 * feather))
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-(t**2) / (2 * feather**2))
        k = k / k.sum()
        product = F.conv2d(F.pad(product, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        product = F.conv2d(F.pad(product, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return product.clamp(0, 1).reshape(n, 1, h, w)


def composite(stylised: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stylised product on a white background: ``mask * stylised + (1 - mask) * white``."""
    return mask * stylised + (1.0 - mask)


# ---- losses ---------------------------------------------------------------------------------------------------


def gram(feat: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrices ``[N, C, C]`` normalised by C x (pixels); with ``mask`` only the masked pixels count."""
    n, c, h, w = feat.shape
    f = feat.float().reshape(n, c, h * w)
    if mask is None:
        return f @ f.transpose(1, 2) / (c * h * w)
    m = F.interpolate(mask.float(), size=(h, w), mode="area").reshape(n, 1, h * w)
    area = m.sum(-1, keepdim=True).clamp_min(1.0)
    return (f * m) @ f.transpose(1, 2) / (c * area)


def content_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a.float(), b.float())


def style_loss(
    feats: list[torch.Tensor], targets: list[torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum over levels of the MSE between Gram matrices of ``feats`` and ``targets`` (``[1 or N, C, C]``)."""
    total = torch.zeros((), device=feats[0].device)
    for f, g in zip(feats, targets, strict=True):
        total = total + F.mse_loss(gram(f, mask), g.expand(len(f), -1, -1))
    return total


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic total variation)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def mean_std(
    feat: torch.Tensor, eps: float = 1e-5, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation ``[N, C, 1, 1]`` (AdaIN statistics), over ``mask`` if given."""
    f = feat.float()
    if mask is None:
        mean = f.mean((2, 3), keepdim=True)
        return mean, (f.var((2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    m = F.interpolate(mask.float(), size=f.shape[-2:], mode="area")
    area = m.sum((2, 3), keepdim=True).clamp_min(1.0)
    mean = (f * m).sum((2, 3), keepdim=True) / area
    var = ((f - mean) ** 2 * m).sum((2, 3), keepdim=True) / area
    return mean, (var + eps).sqrt()


def adain(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Adaptive instance normalisation: content features with the style's channel mean and std."""
    cm, cs = mean_std(content)
    sm, ss = mean_std(style)
    return (content.float() - cm) / cs * ss + sm


def moment_loss(
    feats: list[torch.Tensor], targets: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Huang & Belongie's style loss: MSE of channel means plus MSE of channel stds, summed over levels."""
    total = torch.zeros((), device=feats[0].device)
    for f, (tm, ts) in zip(feats, targets, strict=True):
        m, s = mean_std(f, mask=mask)
        total = total + F.mse_loss(m, tm) + F.mse_loss(s, ts)
    return total
