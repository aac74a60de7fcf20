"""Full-reference image quality (PSNR, SSIM) in plain PyTorch, shared by restoration, translation and style
transfer reports.

Conventions follow torchmetrics / scikit-image defaults so our numbers compare with published ones: images in
[0, 1] (uint8 inputs are divided by 255), PSNR per image then averaged, SSIM with an 11x11 Gaussian window of
sigma 1.5, K1 = 0.01, K2 = 0.03, reflect-padded filtering averaged over every pixel and channel, then images
(torchmetrics' convention, with which the baselines in the README were measured). A test checks both against
torchmetrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def psnr(pred: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """PSNR in dB of ``[N, C, H, W]`` images (uint8 or [0, 1] floats); the mean over images unless ``per_image``."""
    p, t = _unit(pred), _unit(target)
    mse = (p - t).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    values = 10.0 * torch.log10(1.0 / mse)
    return values if per_image else values.mean()


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    pred: torch.Tensor, target: torch.Tensor, per_image: bool = False, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Mean SSIM of ``[N, C, H, W]`` images (uint8 or [0, 1] floats); the mean over images unless ``per_image``."""
    p, t = _unit(pred), _unit(target)
    c = p.shape[1]
    w = _gaussian_window(window, sigma, c, p.device)
    c1, c2 = 0.01**2, 0.03**2
    pad = (window - 1) // 2
    p = F.pad(p, (pad, pad, pad, pad), mode="reflect")
    t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
    mu_p, mu_t = F.conv2d(p, w, groups=c), F.conv2d(t, w, groups=c)
    pp = (F.conv2d(p * p, w, groups=c) - mu_p**2).clamp_min(0)
    tt = (F.conv2d(t * t, w, groups=c) - mu_t**2).clamp_min(0)
    pt = F.conv2d(p * t, w, groups=c) - mu_p * mu_t
    s = ((2 * mu_p * mu_t + c1) * (2 * pt + c2)) / ((mu_p**2 + mu_t**2 + c1) * (pp + tt + c2))
    values = s.flatten(1).mean(1)
    return values if per_image else values.mean()
