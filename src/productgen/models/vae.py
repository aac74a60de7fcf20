"""Variational autoencoders: a class-conditional VAE for sampling per category, and a VAE restorer.

The conditional VAE's decoder is exported as a generator with the GAN generator's call signature,
``forward(z, labels) -> images in [-1, 1]``, so sampling, the generator pyfunc and the FID evaluation use it
unchanged; it is there as the classic likelihood-based baseline next to the GAN (smooth, blurrier samples).

Sampling from N(0, I) asks the decoder for latents the encoder never produced: the aggregated posterior of a
trained VAE is not the prior ("holes" in latent space), and those samples are the blurry, off-manifold ones that
dominate a VAE's FID. With ``vae.prior: fitted`` the export fits a full-covariance Gaussian per category to the
encoder's means on the training split (ex-post density estimation, Ghosh et al. 2020, "From Variational to
Deterministic Autoencoders"; the one-Gaussian cousin of Dai & Wipf's second-stage VAE) and bakes it into the
decoder as an affine map of the noise, so ``forward(z ~ N(0, I), labels)`` is unchanged for every caller.

The VAE restorer is a conditional VAE of the clean image given the degraded one: at training time the encoder
sees both (posterior q(z | clean, degraded)), the decoder sees the latent and the degraded image's features
through a bottleneck at 1/2**levels resolution; at test time it decodes the prior mean (z = 0). It has no
full-resolution skip connections, so its results are smoother than the U-Net's: users see the difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from productgen.common.errors import UserError


def widths(width: int, max_channels: int, levels: int) -> list[int]:
    """Channels at each resolution level, doubling per stride-2 stage, capped."""
    return [min(width * 2**i, max_channels) for i in range(levels + 1)]


def down_stack(cin: int, ch: list[int]) -> nn.Sequential:
    """conv3x3 -> SiLU, then per level a stride-2 conv3x3 -> SiLU: ``[N, cin, H, W] -> [N, ch[-1], H/2^L, W/2^L]``."""
    layers: list[nn.Module] = [nn.Conv2d(cin, ch[0], 3, padding=1), nn.SiLU()]
    for a, b in zip(ch[:-1], ch[1:], strict=True):
        layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.SiLU(), nn.Conv2d(b, b, 3, padding=1), nn.SiLU()]
    return nn.Sequential(*layers)


def up_stack(ch: list[int], cout: int) -> nn.Sequential:
    """Mirror of :func:`down_stack`: nearest 2x upsampling + conv per level, then a conv3x3 to ``cout`` logits."""
    layers: list[nn.Module] = []
    for a, b in zip(reversed(ch[1:]), reversed(ch[:-1]), strict=True):
        layers += [
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(a, b, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(b, b, 3, padding=1),
            nn.SiLU(),
        ]
    layers.append(nn.Conv2d(ch[0], cout, 3, padding=1))
    return nn.Sequential(*layers)


def check_resolution(resolution: int, levels: int, where: str = "vae.levels") -> int:
    if levels < 1 or resolution % 2**levels:
        raise UserError(f"{where}: resolution {resolution} is not a multiple of 2**{levels}; use fewer levels")
    return resolution // 2**levels


class VaeDecoder(nn.Module):
    """p(x | z, label): the exported generator. ``forward(z, labels)`` returns images in [-1, 1]."""

    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int,
        z_dim: int = 32,
        width: int = 32,
        max_channels: int = 128,
        levels: int = 2,
        embed_dim: int = 16,
        fitted_prior: bool = False,
    ) -> None:
        super().__init__()
        self.ch = widths(width, max_channels, levels)
        self.base = check_resolution(resolution, levels)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.fc = nn.Linear(z_dim + embed_dim, self.ch[-1] * self.base * self.base)
        self.up = up_stack(self.ch, channels)
        self.fitted_prior = fitted_prior
        if fitted_prior:  # per category: latent = mean + scale @ noise; the identity until fit_prior fills them
            self.register_buffer("prior_mean", torch.zeros(num_classes, z_dim))
            self.register_buffer("prior_scale", torch.eye(z_dim).repeat(num_classes, 1, 1))

    def logits(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Decoder logits for latents ``z`` as the encoder makes them (training feeds posterior samples here)."""
        h = F.silu(self.fc(torch.cat([z, self.embed(labels)], dim=1)))
        return self.up(h.view(len(z), self.ch[-1], self.base, self.base))

    def latent(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The latent a sample decodes: ``noise`` itself under the N(0, I) prior, else the fitted Gaussian's."""
        if not self.fitted_prior:
            return noise
        scale = self.prior_scale[labels].to(noise.dtype)
        return self.prior_mean[labels].to(noise.dtype) + torch.bmm(scale, noise.unsqueeze(-1)).squeeze(-1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Samples in [-1, 1] for noise ``z ~ N(0, I)`` (the GAN generator's signature)."""
        # tanh(logits / 2) = 2 * sigmoid(logits) - 1: the Bernoulli mean in [-1, 1]
        return torch.tanh(0.5 * self.logits(self.latent(z, labels), labels))


class ConditionalVAE(nn.Module):
    """q(z | x, label) and p(x | z, label); the label embedding enters the encoder as extra constant channels."""

    def __init__(
        self,
        resolution: int,
        channels: int,
        num_classes: int,
        z_dim: int = 32,
        width: int = 32,
        max_channels: int = 128,
        levels: int = 2,
        embed_dim: int = 16,
        fitted_prior: bool = False,
    ) -> None:
        super().__init__()
        ch = widths(width, max_channels, levels)
        base = check_resolution(resolution, levels)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.encoder = down_stack(channels + embed_dim, ch)
        self.to_stats = nn.Linear(ch[-1] * base * base, 2 * z_dim)
        self.decoder = VaeDecoder(
            resolution, channels, num_classes, z_dim, width, max_channels, levels, embed_dim, fitted_prior
        )

    def encode(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(labels)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        mu, logvar = self.to_stats(self.encoder(torch.cat([x, e], dim=1)).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Reconstruction logits, mu, logvar for images ``x`` in [-1, 1]; ``eps`` is the reparameterisation noise."""
        mu, logvar = self.encode(x, labels)
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decoder.logits(z, labels), mu, logvar


@torch.no_grad()
def fit_prior(vae: ConditionalVAE, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], ridge: float = 1e-4) -> dict:
    """Fit the decoder's per-category Gaussian to the encoder means of ``batches`` (``x`` in [-1, 1], labels).

    Moments are accumulated in float64 over all batches, so the fit does not depend on the batch size. A category
    with fewer than two images keeps N(0, I); ``ridge`` (times the mean variance) keeps a category with fewer
    images than latent dimensions invertible. Returns per-category image counts and the mean log-determinant
    (how much tighter than N(0, I) the fitted Gaussians are), for the training report.
    """
    dec = vae.decoder
    if not dec.fitted_prior:
        raise ValueError("fit_prior needs a decoder built with fitted_prior=True")
    k, d = dec.prior_mean.shape
    n = torch.zeros(k, dtype=torch.float64)
    s1 = torch.zeros(k, d, dtype=torch.float64)
    s2 = torch.zeros(k, d, d, dtype=torch.float64)
    for x, y in batches:
        mu = vae.encode(x, y.to(x.device))[0].double().cpu()
        y = y.cpu()
        n.index_add_(0, y, torch.ones(len(y), dtype=torch.float64))
        s1.index_add_(0, y, mu)
        s2.index_add_(0, y, mu[:, :, None] * mu[:, None, :])
    logdets = []
    for c in range(k):
        if n[c] < 2:
            continue
        mean = s1[c] / n[c]
        cov = (s2[c] - n[c] * torch.outer(mean, mean)) / (n[c] - 1)
        cov = 0.5 * (cov + cov.T) + ridge * max(float(cov.diagonal().mean()), 1e-12) * torch.eye(d, dtype=cov.dtype)
        chol = torch.linalg.cholesky(cov)
        dec.prior_mean[c] = mean.to(dec.prior_mean)
        dec.prior_scale[c] = chol.to(dec.prior_scale)
        logdets.append(2.0 * float(torch.log(chol.diagonal()).sum()))
    return {
        "images": [int(v) for v in n.tolist()],
        "mean_logdet": sum(logdets) / len(logdets) if logdets else 0.0,
    }


class VaeRestorer(nn.Module):
    """Conditional VAE of the clean image given the degraded one, fully convolutional (any size multiple of 2**L).

    ``forward(degraded)`` decodes the prior mean, z = 0, and returns the restoration in [-1, 1].
    """

    def __init__(
        self, channels: int = 1, z_dim: int = 32, width: int = 32, max_channels: int = 128, levels: int = 2
    ) -> None:
        super().__init__()
        ch = widths(width, max_channels, levels)
        self.z_dim, self.levels = z_dim, levels
        self.posterior = nn.Sequential(down_stack(2 * channels, ch), nn.Conv2d(ch[-1], 2 * z_dim, 1))
        self.condition = down_stack(channels, ch)
        self.merge = nn.Sequential(nn.Conv2d(ch[-1] + z_dim, ch[-1], 3, padding=1), nn.SiLU())
        self.up = up_stack(ch, channels)

    def decode_logits(self, z: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
        return self.up(self.merge(torch.cat([self.condition(degraded), z], dim=1)))

    def train_forward(
        self, clean: torch.Tensor, degraded: torch.Tensor, eps_gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of the reconstruction from a posterior sample, mu, logvar (all for [-1, 1] inputs)."""
        mu, logvar = self.posterior(torch.cat([clean, degraded], dim=1)).chunk(2, dim=1)
        logvar = logvar.clamp(-12.0, 8.0)
        eps = torch.randn(mu.shape, generator=eps_gen, device=mu.device, dtype=mu.dtype)
        return self.decode_logits(mu + eps * torch.exp(0.5 * logvar), degraded), mu, logvar

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        h, w = degraded.shape[-2:]
        m = 2**self.levels
        ph, pw = (-h) % m, (-w) % m
        x = F.pad(degraded, (0, pw, 0, ph), mode="replicate") if ph or pw else degraded
        z = torch.zeros(len(x), self.z_dim, x.shape[-2] // m, x.shape[-1] // m, device=x.device, dtype=x.dtype)
        return torch.tanh(0.5 * self.decode_logits(z, x))[..., :h, :w]


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).flatten(1).sum(1).mean()


def recon_loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Reconstruction loss in [0, 1] space (target given in [-1, 1]), summed over pixels, averaged over images."""
    t = (target.float() + 1) * 0.5
    if kind == "bce":
        per = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    else:
        p = torch.sigmoid(logits.float())
        per = (p - t).abs() if kind == "l1" else (p - t).pow(2)
    return per.flatten(1).sum(1).mean()


def load_generator(folder: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The (EMA) decoder of a trained ``vae`` as a generator ``(z, labels) -> [-1, 1]``, in eval mode, and its config."""
    from productgen.models.io import load_weights, read_model_config

    cfg, _ = read_model_config(folder, f"{__name__}:load_generator", "a VAE")
    try:
        v = cfg["vae"]
        net = VaeDecoder(
            cfg["resolution"],
            cfg["channels"],
            cfg["num_classes"],
            v["z_dim"],
            v["channels"],
            v["max_channels"],
            v["levels"],
            v["embed_dim"],
            v.get("prior", "normal") == "fitted",  # written since the option exists; older models: N(0, I)
        )
    except (KeyError, TypeError) as err:
        raise UserError(f"{folder / 'config.json'}: incomplete vae config ({err}); re-export the model") from None
    load_weights(net, folder / "generator.safetensors")
    return net.to(device).eval(), cfg


def load_predictor(folder: Path, device: str | torch.device = "cpu") -> Any:
    """The (EMA) VAE restorer of a ``vae-restore`` model folder as an image -> image predictor."""
    from productgen.models.io import load_weights, read_model_config
    from productgen.models.restore import ImagePredictor, parse_view

    cfg, _ = read_model_config(folder, f"{__name__}:load_predictor", "a vae-restore model")
    try:
        v = cfg["vae"]
        net = VaeRestorer(int(cfg["channels"]), v["z_dim"], v["channels"], v["max_channels"], v["levels"])
        view = str(cfg["view"])
    except (KeyError, TypeError) as err:
        raise UserError(
            f"{folder / 'config.json'}: incomplete vae-restore config ({err}); re-export the model"
        ) from None
    parse_view(view, f"{folder / 'config.json'}: view")
    load_weights(net, folder / "vae_restore.safetensors")
    return ImagePredictor(net, cfg, view, int(v["levels"]), device)
