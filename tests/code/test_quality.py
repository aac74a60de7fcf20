"""Our PSNR / SSIM agree with torchmetrics (the reference implementation) on random and structured images."""

from __future__ import annotations

import torch

from productgen.metrics.quality import psnr, ssim


def test_psnr_ssim_match_torchmetrics() -> None:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 3, 32, 32, generator=g)
    noisy = (clean + 0.1 * torch.randn(4, 3, 32, 32, generator=g)).clamp(0, 1)
    ref_ssim = structural_similarity_index_measure(noisy, clean, data_range=1.0).item()
    assert abs(ssim(noisy, clean).item() - ref_ssim) < 1e-5
    per = [peak_signal_noise_ratio(noisy[i], clean[i], data_range=1.0).item() for i in range(4)]
    assert abs(psnr(noisy, clean).item() - sum(per) / 4) < 1e-4
    u8 = (clean * 255).round().to(torch.uint8)
    assert psnr(u8, u8).item() > 100 and abs(ssim(u8, u8).item() - 1) < 1e-6
