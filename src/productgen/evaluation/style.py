"""The style report: how much style a model transferred and whether the product survived it.

Scored in the view the model trained on (see :mod:`productgen.models.styles`); the targets and why are in
docs/quality.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from productgen.common.errors import UserError
from productgen.common.images import to_uint8
from productgen.models.styles import (
    content_loss,
    gram,
    load_style,
    product_mask,
    resize_short,
    style_loss,
    to_float,
)

# product SSIM below this: the product is no longer kept (its structure under the style is lost). Chosen from the
# measured sweep in docs/models.md: models at or above it show every product recognisably in the grids; the
# ones that lost the product (AdaIN at level 2, the per-style net at style_weight 20 and 64 px) measured 0.13-0.15.
SSIM_FLOOR = 0.45


def gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB ``[N, 3, H, W]`` in [0, 1] (``[N, 1, H, W]``); grayscale input passes through."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def masked_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of grayscale ``[N, 1, H, W]`` images over the pixels of ``mask`` (``[N, 1, H, W]``, 0..1).

    The SSIM map of :func:`productgen.metrics.quality.ssim` (same window, constants and reflect padding; a test
    checks a full mask gives its number), averaged over the product only: with the white background kept, the
    whole-image SSIM is high even when the product itself became a blob of colour.
    """
    from productgen.metrics.quality import _gaussian_window

    window, c1, c2 = 11, 0.01**2, 0.03**2
    w = _gaussian_window(window, 1.5, 1, pred.device)
    pad = (window - 1) // 2
    p = F.pad(pred.float(), (pad,) * 4, mode="reflect")
    t = F.pad(target.float(), (pad,) * 4, mode="reflect")
    mu_p, mu_t = F.conv2d(p, w), F.conv2d(t, w)
    pp = (F.conv2d(p * p, w) - mu_p**2).clamp_min(0)
    tt = (F.conv2d(t * t, w) - mu_t**2).clamp_min(0)
    pt = F.conv2d(p * t, w) - mu_p * mu_t
    s = ((2 * mu_p * mu_t + c1) * (2 * pt + c2)) / ((mu_p**2 + mu_t**2 + c1) * (pp + tt + c2))
    m = mask.float()
    return ((s * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)).mean()


@torch.no_grad()
def style_metrics(
    stylised: torch.Tensor,
    content: torch.Tensor,
    style: torch.Tensor,
    encoder: Any,
    content_level: int = 2,
    ssim_floor: float = SSIM_FLOOR,
) -> dict[str, float]:
    """Content preservation and style distance of float RGB [0, 1] images (``style``: ``[1, 3, h, w]``).

    ``style_distance`` is the Gram distance (summed over the encoder's levels) to the style image;
    ``style_distance_rel`` divides it by the distance of the unstylised content, so 1 means "no style
    transferred" and 0 "the style's texture statistics exactly" (a ratio, so it compares across styles);
    ``content_ssim`` compares the grayscale structure of the whole stylised image with the content image and
    ``product_ssim`` the same over the product's pixels only (the content's :func:`product_mask`), which a kept
    white background cannot inflate.

    ``style_score`` (the registry's primary metric and the tuner's objective, lower is better) is
    ``style_distance_rel`` plus 10 x the shortfall of ``product_ssim`` below ``ssim_floor``: among models that
    keep the product the one closest to the style wins; one that paints the style over the product loses even to
    doing nothing (1.0). The style distance alone rewards losing the product, so it is never the objective alone.
    """
    from productgen.metrics.quality import ssim

    fs, fc, fx = encoder(stylised), encoder(content), encoder(style)
    targets = [gram(f) for f in fx]
    dist = float(style_loss(fs, targets))
    base = float(style_loss(fc, targets))
    cl = float(content_loss(fs[content_level], fc[content_level]))
    gs, gc = gray(stylised).clamp(0, 1), gray(content).clamp(0, 1)
    s = float(ssim(gs, gc))
    ps = float(masked_ssim(gs, gc, product_mask(content.float(), dilate=0, feather=0.0)))
    rel = dist / max(base, 1e-12)
    score = rel + 10.0 * max(0.0, ssim_floor - ps)
    return {
        "style_score": score,
        "style_distance_rel": rel,
        "style_distance": dist,
        "content_ssim": s,
        "product_ssim": ps,
        "content_loss": cl,
        "content_style_distance": base,
        "ssim_floor": ssim_floor,
    }


def _report_grid(content: np.ndarray, stylised: np.ndarray, style: np.ndarray, path: Path, size: int = 128) -> Path:
    """Style image on the left (two rows tall), content images on top, stylised images below."""
    from PIL import Image

    from productgen.common.grids import save_png

    def fit(a: np.ndarray, box: int) -> Image.Image:  # scaled up or down to fill the box, aspect kept
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
        r = box / max(im.size)
        im = im.resize((max(1, round(im.width * r)), max(1, round(im.height * r))), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (box, box), (255, 255, 255))
        canvas.paste(im, ((box - im.width) // 2, (box - im.height) // 2))
        return canvas

    n, gap = len(content), 2
    x0 = 2 * size + 2 * gap  # the style image is two rows tall
    grid = Image.new("RGB", (x0 + (size + gap) * n, size * 2 + gap), (200, 200, 200))
    grid.paste(fit(style, 2 * size + gap), (0, 0))
    for i in range(n):
        grid.paste(fit(content[i], size), (x0 + i * (size + gap), 0))
        grid.paste(fit(stylised[i], size), (x0 + i * (size + gap), size + gap))
    return save_png(grid, path)


def style_report(
    predictor: Any,
    content: torch.Tensor,
    style: str | np.ndarray | torch.Tensor,
    out: Path,
    device: str | torch.device = "cpu",
    encoder: Any = None,
    ssim_floor: float = SSIM_FLOOR,
    labels: torch.Tensor | None = None,
    classes: list[str] | None = None,
    notes: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Stylise uint8 ``content`` ``[N, C, H, W]`` with ``predictor`` and measure it against ``style``.

    ``style``: a built-in name or path, uint8 ``[H, W, 3]`` numpy or ``[1, 3, H, W]`` tensor. For an AdaIN model
    the same style is passed to the predictor. Metrics use the default encoder (EfficientNet-Lite0) whatever the
    model trained with, so models compare on one scale. ``notes`` (how the content was prepared) are added to
    the metrics as they are. Writes ``out/metrics.json``, ``out/report.md`` and
    ``out/before_after.png``; returns the metrics. Primary metric: ``style_score`` (lower is better).
    """
    from productgen.apply.folders import run_batch
    from productgen.common import atomic
    from productgen.models.encoders import load_encoder
    from productgen.tasks import for_model

    if isinstance(style, str):
        style_arr = load_style(style)
    elif isinstance(style, torch.Tensor):
        style_arr = style.reshape(-1, *style.shape[-2:]).permute(1, 2, 0).cpu().numpy()
    else:
        style_arr = np.asarray(style)
    if style_arr.dtype != np.uint8 or style_arr.ndim != 3 or style_arr.shape[-1] != 3:
        raise UserError("style: expected an RGB uint8 image [H, W, 3]")
    content = content.cpu()
    if content.dtype != torch.uint8 or content.ndim != 4:
        raise UserError("content: expected uint8 images [N, C, H, W]")
    channels = int(predictor.channels)
    arrays = list(to_float(content).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    if channels == 1:
        arrays = [a[..., :1] for a in arrays]
    spec = for_model(str(predictor.config.get("model")))
    if spec is not None and spec.style_input:
        options = {"style": torch.from_numpy(style_arr.copy()).permute(2, 0, 1)[None].contiguous(), **options}
    with torch.inference_mode():
        outs = run_batch(predictor, arrays, device, **options)
    stylised = to_float(torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2))
    content_f = to_float(content)
    if stylised.shape[-2:] != content_f.shape[-2:]:
        stylised = F.interpolate(stylised, size=content_f.shape[-2:], mode="area")
    enc = encoder if encoder is not None else load_encoder("efficientnet-lite0", device=device)
    style_f = resize_short(
        torch.from_numpy(style_arr.copy()).permute(2, 0, 1)[None].float() / 255.0, max(content_f.shape[-2:])
    )
    metrics = style_metrics(stylised.to(device), content_f.to(device), style_f.to(device), enc, ssim_floor=ssim_floor)
    per_category: dict[str, dict[str, float]] = {}
    if labels is not None and classes is not None:  # the same figures per category (``labels`` index ``classes``)
        for c, name in enumerate(classes):
            sel = (labels == c).cpu()
            if int(sel.sum()):
                m = style_metrics(
                    stylised[sel].to(device), content_f[sel].to(device), style_f.to(device), enc, ssim_floor=ssim_floor
                )
                per_category[name] = {
                    "style_score": m["style_score"],
                    "content_ssim": m["content_ssim"],
                    "product_ssim": m["product_ssim"],
                    "style_distance_rel": m["style_distance_rel"],
                    "n": int(sel.sum()),
                }
    metrics = {
        **metrics,
        "images": len(content),
        "model": predictor.config.get("model"),
        "primary_metric": "style_score",
        "direction": "lower",
        **(notes or {}),
        "per_category": per_category,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "metrics.json", metrics)
    k = min(8, len(content))
    _report_grid(
        to_uint8(content_f[:k], low=0.0).permute(0, 2, 3, 1).numpy(),
        np.stack(outs[:k]),
        style_arr,
        out / "before_after.png",
    )
    md = [
        "# Style transfer report",
        "",
        f"Model: `{metrics['model']}`, {metrics['images']} content images.",
        "",
        "| metric | value | meaning |",
        "|---|---|---|",
        f"| style_score | {metrics['style_score']:.4f} | primary, lower is better: style_distance_rel, plus 10 x "
        f"the shortfall of product_ssim below {metrics['ssim_floor']} |",
        f"| style_distance_rel | {metrics['style_distance_rel']:.4f} | Gram distance to the style / that of the "
        "unstylised content (1 = no style) |",
        f"| style_distance | {metrics['style_distance']:.6g} | Gram-matrix MSE summed over encoder levels |",
        f"| content_ssim | {metrics['content_ssim']:.4f} | SSIM of grayscale structure vs the content (1 = identical) |",
        f"| product_ssim | {metrics['product_ssim']:.4f} | the same SSIM over the product's pixels only (the kept "
        "white background does not count) |",
        f"| content_loss | {metrics['content_loss']:.6g} | encoder feature MSE vs the content |",
        "",
        "![before and after](before_after.png)",
        "",
    ]
    atomic.write_text(out / "report.md", "\n".join(md))
    return metrics
