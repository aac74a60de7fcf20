"""The conditional VAE and the VAE restorer through the real entry points on the tiny prepared set: both learn,
resume bit-identically, and export what the rest of the system loads (a GAN-compatible generator; an image
predictor evaluated like the U-Net)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from productgen.apply.generation import sample
from productgen.common.errors import UserError
from productgen.config import Params, load_params
from productgen.evaluation.restoration import evaluate_restoration
from productgen.models.predict import load_predictor
from productgen.models.vae import VaeDecoder, load_generator
from productgen.pipeline.train import train


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One thread is much faster than two contending ones for these tiny convolutions; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(params: Path, out: Path, steps: int, quick: bool = False, **vae: Any) -> Params:
    p = load_params(params)
    v = {"z_dim": 4, "channels": 8, "max_channels": 16, "levels": 2, "embed_dim": 4, "lr": 3e-3, **vae}
    t = {"out": str(out), "max_steps": steps, **({"checkpoint_every": 10_000, "sample_every": 10_000} if quick else {})}
    return dataclasses.replace(p, train=dataclasses.replace(p.train, **t), vae=dataclasses.replace(p.vae, **v))


def losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for n in names:
        out.update({f"{n}.{k}": v for k, v in load_file(str(run / "model" / f"{n}.safetensors")).items()})
    return out


def test_vae_learns_and_exports_a_gan_compatible_generator(params: Path, tmp_path: Path) -> None:
    run = tmp_path / "v"
    train(tiny(params, run, 24, quick=True), "vae", show_progress=False)
    curve = losses(run)
    assert np.mean(curve[-3:]) < 0.8 * np.mean(curve[:2]), curve
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["model"] == "vae" and cfg["gan"]["z_dim"] == cfg["vae"]["z_dim"] == 4
    assert cfg["num_classes"] == len(cfg["classes"]) == 3 and cfg["resolution"] == 28 and cfg["channels"] == 1
    net, cfg2 = load_generator(run / "model")
    assert isinstance(net, VaeDecoder) and cfg2 == cfg
    labels = torch.tensor([0, 1, 2, 2])
    x = net(torch.randn(4, 4), labels)
    assert x.shape == (4, 1, 28, 28) and x.abs().max() <= 1
    a, b = sample(net, cfg["gan"]["z_dim"], labels, seed=3), sample(net, cfg["gan"]["z_dim"], labels, seed=3)
    assert a.dtype == np.uint8 and a.shape == (4, 1, 28, 28) and np.array_equal(a, b)
    assert (run / "samples" / "step-0000024.png").is_file()
    with pytest.raises(UserError, match="not a VAE"):
        _not_vae(tmp_path)


def _not_vae(tmp_path: Path) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": "gan"}))
    load_generator(folder)


def test_vae_resume_is_bit_identical_with_kl_warmup(params: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny(params, a, 6, kl_warmup=4), "vae", show_progress=False)
    train(tiny(params, b, 4, kl_warmup=4), "vae", show_progress=False)
    train(tiny(params, b, 6, kl_warmup=4), "vae", resume=True, show_progress=False)
    wa, wb = weights(a, ("generator", "vae")), weights(b, ("generator", "vae"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_vae_restore_learns_resumes_and_evaluates(params: Path, tmp_path: Path) -> None:
    run = tmp_path / "vr"
    p = tiny(params, run, 24, quick=True, view="noise50")
    train(p, "vae-restore", show_progress=False)
    curve = losses(run)
    assert np.mean(curve[-3:]) < 0.8 * np.mean(curve[:2]), curve
    pred = load_predictor(run / "model")
    assert (pred.channels, pred.scale, pred.multiple) == (1, 1, 4)
    out = pred(torch.randint(0, 256, (2, 1, 20, 12), dtype=torch.uint8))
    assert out.shape == (2, 1, 20, 12) and out.dtype == torch.uint8
    m = evaluate_restoration(run / "model", p.data.out, split="train", out=tmp_path / "eval", show_progress=False)
    assert m["model"] == "vae-restore" and m["view"] == "noise50" and np.isfinite(m["psnr"])
    assert "| model (vae-restore) |" in (tmp_path / "eval" / "report.md").read_text()

    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny(params, a, 4, view="sr2"), "vae-restore", show_progress=False)
    train(tiny(params, b, 2, view="sr2"), "vae-restore", show_progress=False)
    train(tiny(params, b, 4, view="sr2"), "vae-restore", resume=True, show_progress=False)
    wa, wb = weights(a, ("vae_restore",)), weights(b, ("vae_restore",))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_vae_levels_must_divide_the_resolution(params: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="vae.levels"):
        train(tiny(params, tmp_path / "x", 2, levels=3), "vae", show_progress=False)


def test_fit_prior_matches_numpy_per_category_moments_whatever_the_batches() -> None:
    """The fitted Gaussian is each category's mean and covariance (numpy's, plus the ridge) of the encoder means,
    the same for any batching; a category with fewer than two images keeps N(0, I)."""
    from productgen.models.vae import ConditionalVAE, fit_prior

    torch.manual_seed(0)
    x = torch.rand(90, 1, 28, 28) * 2 - 1
    y = torch.tensor([0] * 40 + [1] * 49 + [2])  # category 2: one image

    def fitted(batch: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        torch.manual_seed(1)
        vae = ConditionalVAE(28, 1, 4, z_dim=3, width=8, max_channels=16, embed_dim=4, fitted_prior=True).eval()
        info = fit_prior(vae, ((x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)), ridge=1e-4)
        return vae.decoder.prior_mean.clone(), vae.decoder.prior_scale.clone(), info

    mean, scale, info = fitted(7)
    mean2, scale2, _ = fitted(90)
    assert torch.allclose(mean, mean2, atol=1e-6) and torch.allclose(scale, scale2, atol=1e-5)
    assert info["images"] == [40, 49, 1, 0]
    torch.manual_seed(1)
    ref = ConditionalVAE(28, 1, 4, z_dim=3, width=8, max_channels=16, embed_dim=4, fitted_prior=True).eval()
    with torch.no_grad():
        mu = ref.encode(x, y)[0].double().numpy()
    for c in (0, 1):
        codes = mu[y.numpy() == c]
        cov = np.cov(codes, rowvar=False)
        cov += 1e-4 * cov.diagonal().mean() * np.eye(3)
        np.testing.assert_allclose(mean[c].numpy(), codes.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose((scale[c] @ scale[c].T).double().numpy(), cov, rtol=1e-4, atol=1e-8)
    for c in (2, 3):
        assert torch.equal(mean[c], torch.zeros(3)) and torch.equal(scale[c], torch.eye(3))


def test_vae_with_a_fitted_prior_samples_where_its_encoder_puts_the_category(params: Path, tmp_path: Path) -> None:
    """Trained through the real entry point with vae.prior: fitted, the exported generator maps N(0, I) noise to
    latents with its category's fitted mean and covariance, and still loads and samples like any generator."""
    run = tmp_path / "v"
    train(tiny(params, run, 12, quick=True, prior="fitted"), "vae", show_progress=False)
    net, cfg = load_generator(run / "model")
    assert cfg["vae"]["prior"] == "fitted" and net.fitted_prior
    assert not torch.equal(net.prior_scale[0], torch.eye(4)) and net.prior_mean.abs().sum() > 0
    torch.manual_seed(0)
    labels = torch.full((20_000,), 1)
    z = net.latent(torch.randn(20_000, 4), labels)
    cov = net.prior_scale[1] @ net.prior_scale[1].T
    assert torch.allclose(z.mean(0), net.prior_mean[1], atol=0.05 * float(cov.diagonal().max().sqrt()))
    assert torch.allclose(torch.cov(z.T), cov, rtol=0.1, atol=0.05 * float(cov.diagonal().max()))
    a = sample(net, 4, torch.tensor([0, 1, 2]), seed=5)
    assert a.shape == (3, 1, 28, 28) and np.array_equal(a, sample(net, 4, torch.tensor([0, 1, 2]), seed=5))
    with torch.no_grad():  # forward is the decoder at the fitted latent, not at the raw noise
        noise = torch.randn(3, 4)
        y = torch.tensor([0, 1, 2])
        expect = torch.tanh(0.5 * net.logits(net.prior_mean[y] + (net.prior_scale[y] @ noise[:, :, None])[..., 0], y))
        assert torch.allclose(net(noise, y), expect, atol=1e-6)
        assert not torch.allclose(net(noise, y), torch.tanh(0.5 * net.logits(noise, y)), atol=1e-3)
