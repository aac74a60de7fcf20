"""pix2pix and CycleGAN through the real entry points on the tiny prepared dataset: they learn (L1 / cycle loss
fall), resume bit-identically, export loadable predictors, evaluate, and translate a folder with a bad file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from productgen.common.errors import UserError
from productgen.config import Params, ViewsConfig, load_params
from productgen.pipeline.train import train
from tests.conftest import product_image, tree_digest

TINY_NETS = {
    "translate.g_channels": 8,
    "translate.d_channels": 8,
    "translate.max_channels": 32,
    "translate.resnet_blocks": 2,
    "translate.domain_a": "bags",
    "translate.domain_b": "shoes",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared, oversubscribed CPU it is 10x faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _params(path: Path, out: Path, steps: int, **extra: Any) -> Params:
    overrides = {"train.out": str(out), "train.max_steps": steps, **TINY_NETS}
    overrides.update({k.replace("__", "."): v for k, v in extra.items()})
    return load_params(path, overrides)


def _losses(run: Path, key: str) -> list[float]:
    return [json.loads(ln)[key] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted((run / "model").glob("*.safetensors")):
        out.update({f"{f.stem}.{k}": v for k, v in load_file(str(f)).items()})
    return out


@pytest.fixture(scope="module")
def pix2pix_run(params: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("p2p") / "run"
    train(
        _params(params, run, 30, translate__lr=1e-3, translate__dropout=0.0, train__log_every=5),
        "pix2pix",
        show_progress=False,
    )
    return run


@pytest.fixture(scope="module")
def cyclegan_run(params: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("cyc") / "run"
    train(_params(params, run, 20, translate__lr=1e-3, train__log_every=5), "cyclegan", show_progress=False)
    return run


def test_pix2pix_learns_edges_to_product(pix2pix_run: Path) -> None:
    l1 = _losses(pix2pix_run, "l1")
    assert len(l1) == 6 and l1[-1] < 0.7 * l1[0], l1
    cfg = json.loads((pix2pix_run / "model" / "config.json").read_text())
    assert cfg["model"] == "pix2pix" and cfg["source_view"] == "edges" and cfg["translate"]["unet_depth"] == 4
    assert {f.name for f in (pix2pix_run / "model").iterdir()} >= {"generator.safetensors", "config.json"}
    assert (pix2pix_run / "samples" / "step-0000030.png").is_file()  # rows: input / output / target

    from productgen.apply.folders import run_batch
    from productgen.models.predict import load_predictor

    pred = load_predictor(pix2pix_run / "model")
    assert (pred.channels, pred.multiple, pred.scale) == (1, 16, 1)
    outs = run_batch(pred, [np.full((28, 20, 1), 255, np.uint8), np.zeros((28, 20, 1), np.uint8)])
    assert [o.shape for o in outs] == [(28, 20, 1)] * 2 and outs[0].dtype == np.uint8
    assert not np.array_equal(outs[0], outs[1])


def test_cyclegan_learns_cycle(cyclegan_run: Path) -> None:
    cycle = _losses(cyclegan_run, "cycle")
    assert cycle[-1] < 0.5 * cycle[0], cycle
    cfg = json.loads((cyclegan_run / "model" / "config.json").read_text())
    assert cfg["model"] == "cyclegan" and cfg["domains"]["a"] == "bags" and cfg["domains"]["b"] == "shoes"
    from productgen.models.predict import load_predictor

    pred = load_predictor(cyclegan_run / "model")
    x = torch.from_numpy(np.array(product_image(3, (28, 28), "L"))).reshape(1, 1, 28, 28)
    ab, ba = pred(x), pred(x, direction="ba")
    assert ab.shape == ba.shape == (1, 1, 28, 28) and not torch.equal(ab, ba)
    with pytest.raises(UserError, match="direction"):
        pred(x, direction="ca")


@pytest.mark.parametrize("kind", ["resnet", "unet"])
def test_residual_generator_starts_at_the_identity_and_learns(kind: str) -> None:
    """translate.cyclegan_residual: out = clamp(x + 2 r(x)), r zero at the start but with a gradient."""
    from productgen.models.translate import ResidualGenerator, build_generator

    t = {
        "g_channels": 8,
        "resnet_blocks": 2,
        "norm": "instance",
        "unet_depth": None,
        "max_channels": 32,
        "dropout": 0.0,
    }
    torch.manual_seed(0)
    g = build_generator(kind, 1, 28, t, residual=True)
    assert isinstance(g, ResidualGenerator) and g.multiple == (4 if kind == "resnet" else 16)
    x = torch.rand(3, 1, 28, 20) * 2 - 1  # odd width: padded and cropped like the plain generators
    y = g(x)
    assert y.shape == x.shape and torch.equal(y, x)  # exactly the identity before training
    (y - 1).square().mean().backward()
    grads = [p.grad for p in g.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert grads, "the zero-initialised last layer must still get a gradient"
    torch.optim.SGD(g.parameters(), lr=0.5).step()
    with torch.no_grad():
        y2 = g(x)
    assert not torch.equal(y2, x) and y2.min() >= -1 and y2.max() <= 1  # it moved, and stays in [-1, 1]


@pytest.mark.parametrize(
    "task, extra",
    [
        ("pix2pix", {"translate__source_view": "noise25"}),  # dropout on, noise drawn per step: both must replay
        # the image history fills, then swaps: it must be checkpointed; residual generators (the cpu-cyclegan recipe)
        ("cyclegan", {"translate__pool_size": 4, "translate__cyclegan_residual": True}),
    ],
)
def test_resume_is_bit_identical(params: Path, tmp_path: Path, task: str, extra: dict[str, Any]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train(_params(params, a, 4, **extra), task, show_progress=False)
    train(_params(params, b, 2, **extra), task, show_progress=False)
    with pytest.raises(UserError, match="--resume"):
        train(_params(params, b, 4, **extra), task, show_progress=False)
    train(_params(params, b, 4, **extra), task, resume=True, show_progress=False)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 10
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    if task == "cyclegan":  # the predictor rebuilds the residual generators from config.json
        from productgen.models.predict import load_predictor
        from productgen.models.translate import ResidualGenerator

        assert all(isinstance(g, ResidualGenerator) for g in load_predictor(b / "model").generators.values())
    with pytest.raises(UserError, match="different settings"):
        train(_params(params, b, 6, **{**extra, "translate__lambda_l1": 5.0}), task, resume=True, show_progress=False)


def test_bad_settings_are_one_line_errors(params: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"translate.domain_b: unknown category 'boots' \(choose from bags"):
        train(_params(params, tmp_path / "c", 2, translate__domain_b="boots"), "cyclegan", show_progress=False)
    with pytest.raises(UserError, match="translate.source_view: 'pencil'"):
        train(_params(params, tmp_path / "p", 2, translate__source_view="pencil"), "pix2pix", show_progress=False)
    with pytest.raises(UserError, match="folder_a / folder_b"):
        train(_params(params, tmp_path / "f", 2, translate__folder_a=str(tmp_path)), "cyclegan", show_progress=False)


def test_evaluate_pix2pix_psnr_ssim(pix2pix_run: Path, params: Path, tmp_path: Path) -> None:
    from productgen.data.dataset import PreparedDataset
    from productgen.data.views import make_view
    from productgen.evaluation.translation import evaluate_translation
    from productgen.metrics.quality import psnr, ssim
    from productgen.models.predict import load_predictor

    prepared = load_params(params).data.out
    m = evaluate_translation(
        pix2pix_run / "model", prepared, split="train", out=tmp_path / "e", max_images=8, fid=False, batch_size=3
    )
    assert m["n_images"] == 8 and m["primary_metric"] == {"name": "psnr", "direction": "higher"} and "fid" not in m
    # The same number from first principles: the seeded subset, its edge views at split indices, the predictor.
    images, _ = PreparedDataset(prepared).tensors("train")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:8].sort().values
    src = make_view(images[idx], "edges", ViewsConfig(), idx)
    out = load_predictor(pix2pix_run / "model")(src)
    assert m["psnr"] == pytest.approx(float(psnr(out, images[idx])), abs=1e-4)
    assert m["ssim"] == pytest.approx(float(ssim(out, images[idx])), abs=1e-4)
    assert m["input_psnr"] == pytest.approx(float(psnr(src, images[idx])), abs=1e-4)
    assert json.loads((tmp_path / "e" / "metrics.json").read_text()) == m
    assert "PSNR" in (tmp_path / "e" / "report.md").read_text()
    assert Image.open(tmp_path / "e" / "before_after.png").size[0] > 8 * 28


def test_evaluate_cyclegan_with_fid(cyclegan_run: Path, params: Path, tmp_path: Path) -> None:
    from productgen.evaluation.translation import evaluate_translation

    prepared = load_params(params).data.out
    m = evaluate_translation(
        cyclegan_run / "model", prepared, split="train", out=tmp_path / "e", max_images=3, fid=True, batch_size=8
    )
    assert m["n_a"] == 3 and m["n_b"] == 3 and m["primary_metric"] == {"name": "fid", "direction": "lower"}
    assert m["fid"] > 0 and m["fid_identity"] > 0 and m["fid_gain"] == pytest.approx(m["fid_identity"] - m["fid"])
    assert 0 < m["cycle_psnr"] < 100 and -1 <= m["cycle_ssim"] <= 1
    assert "identity baseline" in (tmp_path / "e" / "report.md").read_text()


def test_cyclegan_kid_has_a_spread_for_the_model_and_the_identity(
    cyclegan_run: Path, params: Path, tmp_path: Path
) -> None:
    """Subsets of half the set, so the spread is not the zero of identical subsets; the identity's KID is the
    one of the untranslated images' features, computed here again."""
    from productgen.data.dataset import PreparedDataset
    from productgen.evaluation.translation import evaluate_translation
    from productgen.metrics import compute_statistics, get_extractor, kid_from_features
    from productgen.models.io import read_config

    prepared = load_params(params).data.out
    m = evaluate_translation(
        cyclegan_run / "model", prepared, split="train", out=tmp_path / "e", max_images=8, batch_size=8
    )
    assert m["kid_subset_size"] == m["kid_identity_subset_size"] == 4
    assert m["kid_std"] > 0 and m["kid_identity_std"] > 0
    assert m["kid_gain"] == pytest.approx(m["kid_identity_mean"] - m["kid_mean"])
    noise = (m["kid_std"] ** 2 + m["kid_identity_std"] ** 2) ** 0.5
    assert m["kid_gain_sigmas"] == pytest.approx(m["kid_gain"] / noise)
    ds, domains = PreparedDataset(prepared), read_config(cyclegan_run / "model")["domains"]
    images, labels = ds.tensors("train")

    def subset(name: str, seed: int) -> torch.Tensor:
        x = images[labels == ds.classes.index(name)]
        return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:8].sort().values]

    net = get_extractor("tf-inception", "cpu")
    a, b = (compute_statistics(subset(domains[k], s), net, keep_features=True) for k, s in (("a", 0), ("b", 1)))
    assert m["kid_identity_mean"] == pytest.approx(kid_from_features(a.features, b.features, subset_size=4).mean)
    assert "KID x 1000" in (tmp_path / "e" / "report.md").read_text()
    without = evaluate_translation(
        cyclegan_run / "model", prepared, split="train", out=tmp_path / "n", max_images=8, kid_subset_size=None
    )
    assert "kid_mean" not in without and without["fid"] == pytest.approx(m["fid"])


def test_translate_cli_folder_with_bad_file(pix2pix_run: Path, cyclegan_run: Path, tmp_path: Path) -> None:
    import typer

    from productgen.cli.translate import translate_cmd

    app = typer.Typer()
    app.command()(translate_cmd)
    src = tmp_path / "sketches"
    (src / "sub").mkdir(parents=True)
    product_image(1, (28, 28)).save(src / "a.png")
    product_image(2, (40, 30)).save(src / "sub" / "b.jpg")
    product_image(3, (28, 28)).save(src / "c.webp")
    (src / "notes.jpg").write_text("not an image\n")
    before = tree_digest(src)
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "--model",
            str(pix2pix_run / "model"),
            "--in",
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--grid",
            str(tmp_path / "grid.png"),
            "--batch-size",
            "2",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "3 written" in r.output and "1 failed" in r.output and "notes.jpg" in r.output
    assert Image.open(tmp_path / "o" / "sub" / "b.png").size == (40, 30)
    assert {p.name for p in (tmp_path / "o").rglob("*.png")} == {"a.png", "b.png", "c.png"}
    assert (tmp_path / "grid.png").is_file() and tree_digest(src) == before
    bad = runner.invoke(
        app,
        ["--model", str(pix2pix_run / "model"), "--in", str(src), "--out", str(tmp_path / "x"), "--direction", "ba"],
    )
    assert bad.exit_code == 2 and "one way only" in bad.output and not (tmp_path / "x").exists()
    back = runner.invoke(
        app,
        [
            "--model",
            str(cyclegan_run / "model"),
            "--in",
            str(src),
            "--out",
            str(tmp_path / "y"),
            "--direction",
            "ba",
            "--size",
            "16",
            "-q",
        ],
    )
    assert back.exit_code == 0 and Image.open(tmp_path / "y" / "sub" / "b.png").size == (16, 12)
