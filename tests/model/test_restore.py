"""The restoration U-Net through the real entry points on the tiny prepared set: it learns (beats the degraded
input it starts from), resumes bit-identically, evaluates against the exact baselines, and the enhance command
processes a folder with a bad file in it without touching the inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from productgen.common.errors import UserError
from productgen.config import Params, ViewsConfig, load_params
from productgen.data.dataset import PreparedDataset
from productgen.data.views import make_view
from productgen.evaluation.restoration import evaluate_restoration
from productgen.metrics.quality import psnr, ssim
from productgen.models.predict import load_predictor
from productgen.models.restore import UNet, degrade, parse_view
from productgen.pipeline.train import train
from tests.conftest import product_image, tree_digest


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny convolutions on a shared 2-core machine run many times faster on one thread than two that wait for
    each other; restored afterwards so other test modules keep their settings."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(params: Path, out: Path, steps: int, quick: bool = False, **restore: Any) -> Params:
    """The tiny test params with a small U-Net; ``quick``: checkpoints and samples only at the end."""
    p = load_params(params)
    r = {"channels": 8, "max_channels": 16, "levels": 2, "lr": 3e-3, "warmup_steps": 0, **restore}
    t = {"out": str(out), "max_steps": steps, **({"checkpoint_every": 10_000, "sample_every": 10_000} if quick else {})}
    return dataclasses.replace(p, train=dataclasses.replace(p.train, **t), restore=dataclasses.replace(p.restore, **r))


def losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_unet_starts_as_identity_on_any_size() -> None:
    net = UNet(1, width=8, max_channels=16, levels=3, blocks=2, norm="group")
    for shape in [(2, 1, 28, 28), (1, 1, 30, 17)]:
        x = torch.rand(shape) * 2 - 1
        assert torch.equal(net(x), x)  # zero-initialised head: the untrained model returns its input
    net.head[-1].weight.data.normal_()
    y = net(torch.rand(1, 1, 30, 17))
    assert y.shape == (1, 1, 30, 17)


def test_degradations_match_the_fixed_views() -> None:
    cfg = ViewsConfig()
    clean = torch.from_numpy(np.stack([np.asarray(product_image(i, (28, 28), "L")) for i in range(4)]))[:, None]
    gen = torch.Generator().manual_seed(0)
    for view in ("blur", "jpeg", "sr2", "sr4"):
        assert torch.equal(degrade(clean, view, cfg, gen), make_view(clean, view, cfg))
    a = degrade(clean, "noise25", cfg, torch.Generator().manual_seed(3))
    b = degrade(clean, "noise25", cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, clean)
    mid = (clean > 60) & (clean < 195)  # away from clipping the noise keeps its sigma
    assert abs(float((a.float() - clean.float())[mid].std()) - 25) < 2.5
    for bad in ("noise", "sr1", "blurry", "noise-5"):
        with pytest.raises(UserError, match="restore.view"):
            parse_view(bad)


def test_restore_learns_and_evaluates_against_exact_baseline(params: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    p = tiny(params, run, 30, quick=True, view="noise50")
    result = train(p, "restore", track=False, show_progress=False)
    assert result.step == 30
    curve = losses(run)
    assert np.mean(curve[-3:]) < 0.8 * np.mean(curve[:2]), curve
    cfg = json.loads((run / "model" / "config.json").read_text())
    assert cfg["model"] == "restore" and cfg["view"] == "noise50" and cfg["restore"]["channels"] == 8
    assert (run / "samples" / "step-0000030.png").is_file()

    m = evaluate_restoration(run / "model", p.data.out, split="train", out=tmp_path / "eval", show_progress=False)
    images, _ = PreparedDataset(p.data.out).tensors("train")
    view = make_view(images, "noise50", ViewsConfig())
    assert m["images"] == len(images) and m["view"] == "noise50"
    assert m["baseline_psnr"] == pytest.approx(float(psnr(view, images)), abs=1e-4)
    assert m["baseline_ssim"] == pytest.approx(float(ssim(view, images)), abs=1e-5)
    assert m["psnr"] > m["baseline_psnr"] + 1.0  # it started as the identity, so this is learnt
    assert m["gain_db"] == pytest.approx(m["psnr"] - m["baseline_psnr"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(m["psnr"])
    assert "| model (restore) |" in (tmp_path / "eval" / "report.md").read_text()
    grid = Image.open(tmp_path / "eval" / "before_after.png")
    assert grid.height > 3 * 28  # three rows

    sub = evaluate_restoration(
        run / "model",
        p.data.out,
        split="train",
        out=tmp_path / "eval2",
        max_images=5,
        batch_size=2,
        show_progress=False,
    )
    assert sub["images"] == 5 and sub["subset_seed"] == 0


def test_restore_resume_is_bit_identical(params: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train(tiny(params, a, 6, view="noise25"), "restore", show_progress=False)
    train(tiny(params, b, 4, view="noise25"), "restore", show_progress=False)
    train(tiny(params, b, 6, view="noise25"), "restore", resume=True, show_progress=False)
    for name in ("restore", "restore_raw"):
        wa, wb = (
            load_file(str(a / "model" / f"{name}.safetensors")),
            load_file(str(b / "model" / f"{name}.safetensors")),
        )
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(UserError, match="different settings"):
        train(tiny(params, b, 8, view="noise15"), "restore", resume=True, show_progress=False)


def test_sr_predictor_upscales_then_restores(params: Path, tmp_path: Path) -> None:
    run = tmp_path / "sr"
    train(tiny(params, run, 2, quick=True, view="sr2"), "restore", show_progress=False)
    pred = load_predictor(run / "model")
    assert (pred.channels, pred.scale, pred.multiple) == (1, 2, 4)
    low = torch.randint(0, 256, (3, 1, 14, 10), dtype=torch.uint8)
    out = pred(low)
    assert out.shape == (3, 1, 28, 20) and out.dtype == torch.uint8


def _app() -> typer.Typer:
    from productgen.cli.enhance import enhance_command

    app = typer.Typer()
    app.command()(enhance_command)
    return app


def test_enhance_command_on_a_folder_with_a_bad_file(params: Path, tmp_path: Path) -> None:
    run = tmp_path / "den"
    train(tiny(params, run, 2, quick=True, view="noise25"), "restore", show_progress=False)
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    product_image(1, (40, 30), "L").save(src / "a.png")
    product_image(2, (33, 21), "RGB").save(src / "sub" / "b.jpg", quality=90)
    product_image(3, (40, 30), "L").save(src / "c.webp")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    before = tree_digest(src)
    out, grid = tmp_path / "out", tmp_path / "grid.png"
    r = CliRunner().invoke(
        _app(),
        [
            "--in",
            str(src),
            "--out",
            str(out),
            "--task",
            "denoise",
            "--model",
            str(run / "model"),
            "--grid",
            str(grid),
            "-q",
            "--batch-size",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "3 written" in r.output and "1 failed" in r.output and "broken.jpg" in r.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "c.png", "sub/b.png"]
    assert Image.open(out / "sub" / "b.png").size == (33, 21) and Image.open(out / "a.png").mode == "L"
    assert grid.is_file()
    assert tree_digest(src) == before  # inputs untouched

    wrong = CliRunner().invoke(
        _app(), ["--in", str(src), "--out", str(tmp_path / "o2"), "--task", "sr2", "--model", str(run / "model")]
    )
    assert wrong.exit_code == 2 and "sr2" in wrong.output and "noise25" in wrong.output
    assert not (tmp_path / "o2").exists()
    inside = CliRunner().invoke(
        _app(), ["--in", str(src), "--out", str(src / "x"), "--task", "denoise", "--model", str(run / "model")]
    )
    assert inside.exit_code == 2 and tree_digest(src) == before


def test_learning_rate_warms_up_then_decays() -> None:
    from productgen.training.restore_task import cosine_lr

    lrs = [cosine_lr(s, 1e-3, 1e-5, 1000, 100) for s in range(1200)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[49] == pytest.approx(5e-4) and lrs[99] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:99], lrs[1:100]))  # rising during warm-up
    assert all(a >= b for a, b in zip(lrs[100:1000], lrs[101:1001]))  # then cosine down to lr_min
    assert lrs[1000] == pytest.approx(1e-5) and lrs[1199] == pytest.approx(1e-5)
    assert cosine_lr(5, 1e-3, 1e-5, 0, 0) == 1e-3  # both off: constant


def test_negative_warmup_is_a_one_line_error(params: Path) -> None:
    with pytest.raises(UserError, match="restore.warmup_steps"):
        load_params(params, {"restore.warmup_steps": -1})
