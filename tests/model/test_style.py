"""Style transfer through the real entry points on tiny assets: the offline encoder, the VGG19 weights message,
training and exact resume of ``style`` and ``adain``, the product mask, the report and ``productgen stylize``."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
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
from productgen.config import load_params
from productgen.evaluation.style import style_report
from productgen.models.encoders import VGG19, build_encoder, load_encoder
from productgen.models.predict import load_predictor
from productgen.models.styles import product_mask
from productgen.pipeline.train import train
from tests.conftest import tree_digest

STYLE = """
style:
  image_size: 32
  style_size: 48
  channels: 8
  residual_blocks: 1
  decoder_channels: 8
  style_image: coffee
  adain_styles: [coffee, brick, hubble_deep_field]
  adain_lr: 0.001
"""


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convolutions on a shared 2-core machine run several times faster single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def style_params(params: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("style") / "params.yaml"
    path.write_text(params.read_text() + STYLE)
    return path


def _train(params: Path, task: str, out: Path, steps: int, resume: bool = False) -> Any:
    p = load_params(params, {"train.out": str(out), "train.max_steps": steps})
    return train(p, task, resume=resume, show_progress=False)


@pytest.fixture(scope="module")
def trained(style_params: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    return {task: _train(style_params, task, root / task, 16).out for task in ("style", "adain")}


def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any download attempt fails: empty torch hub cache, dead proxy, refused sockets."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_default_encoder_loads_offline_and_is_deterministic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_network(monkeypatch, tmp_path)
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    a, b = load_encoder(), load_encoder()
    fa, fb = a(x), b(x)
    assert [tuple(f.shape) for f in fa] == [(2, 16, 32, 24), (2, 24, 16, 12), (2, 40, 8, 6), (2, 80, 4, 3)]
    assert all(torch.equal(u, v) for u, v in zip(fa, fb, strict=True))
    a.train()  # must stay in eval mode: BatchNorm on ImageNet statistics, not the batch's
    assert not a.training and all(torch.equal(u, v) for u, v in zip(a(x), fb, strict=True))
    assert not any(p.requires_grad for p in a.parameters())
    assert not torch.allclose(build_encoder("efficientnet-lite0")(x)[-1], fa[-1])  # pretrained, not random


def test_vgg19_without_weights_is_a_clear_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_network(monkeypatch, tmp_path)
    with pytest.raises(UserError) as err:
        load_encoder("vgg19")
    msg = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in msg and "style.encoder_weights" in msg and "allow_download" in msg
    assert str(tmp_path / "torch-home") in msg and "\n" not in msg
    with pytest.raises(UserError, match="does not exist"):
        load_encoder("vgg19", weights=str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a weights file")
    with pytest.raises(UserError, match="not a readable vgg19 weights file"):
        load_encoder("vgg19", weights=str(junk))
    with pytest.raises(UserError, match="download"):
        load_encoder("vgg19", allow_download=True)  # the download fails offline: still one clear line
    # A file in torchvision's layout (features.N.weight) loads and gives relu1_1..relu4_1.
    state = {k.replace("features_seq.", "features."): v for k, v in VGG19().state_dict().items()}
    good = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, good)
    feats = load_encoder("vgg19", weights=str(good))(torch.rand(1, 3, 16, 16))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512] and feats[-1].shape[-1] == 2
    with pytest.raises(UserError, match="unknown encoder"):
        load_encoder("resnet7")


def _log(run: Path) -> list[dict[str, float]]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", ["style", "adain"])
def test_training_improves_the_loss(trained: dict[str, Path], task: str) -> None:
    run = trained[task]
    log = _log(run)
    assert [r["step"] for r in log] == list(range(2, 17, 2))
    losses = [r["loss"] for r in log]
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    # 16 steps of batch 8: the loss falls 8-15% (AdaIN's is noisier: one style per batch) and trends down
    assert last < 0.93 * first and np.polyfit(np.arange(len(losses)), losses, 1)[0] < 0, (
        task,
        [round(v, 2) for v in losses],
    )
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model"] == task and config["step"] == 16 and config["style"]["image_size"] == 32
    assert (run / "samples" / "step-0000015.png").is_file()


@pytest.mark.parametrize("task", ["style", "adain"])
def test_resume_is_bit_identical(style_params: Path, tmp_path: Path, task: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _train(style_params, task, a, 4)
    _train(style_params, task, b, 2)
    with pytest.raises(UserError, match="--resume"):
        _train(style_params, task, b, 4)
    _train(style_params, task, b, 4, resume=True)
    for f in sorted((a / "model").glob("*.safetensors")):
        wa, wb = load_file(str(f)), load_file(str(b / "model" / f.name))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f.name
    drop = lambda log: [{k: v for k, v in r.items() if k != "images_per_second"} for r in log]  # noqa: E731
    assert drop(_log(a)) == drop(_log(b))  # the same losses at every logged step


def test_predictors_keep_size_and_white_background(trained: dict[str, Path]) -> None:
    img = torch.full((2, 3, 40, 36), 255, dtype=torch.uint8)
    img[:, :, 10:30, 8:28] = torch.tensor([200, 30, 30], dtype=torch.uint8).view(1, 3, 1, 1)  # a red product
    style = torch.from_numpy(np.array(Image.new("RGB", (50, 30), (0, 90, 200)))).permute(2, 0, 1)[None]
    outs = {}
    for task in ("style", "adain"):
        pred = load_predictor(trained[task] / "model")
        opts = {"style": style} if task == "adain" else {}
        y = pred(img, **opts)
        assert y.dtype == torch.uint8 and y.shape == img.shape
        assert (y[:, :, :3, :] == 255).all() and (y[:, :, :, -3:] == 255).all()  # background kept white
        free = pred(img, preserve_product=False, **opts)
        assert not (free[:, :, :3, :] == 255).all()  # without the mask the background is stylised too
        outs[task] = y
    with pytest.raises(UserError, match="needs a style image"):
        load_predictor(trained["adain"] / "model")(img)
    with pytest.raises(UserError, match="alpha"):
        load_predictor(trained["adain"] / "model")(img, style=style, alpha=1.5)


def test_product_mask_keeps_holes_inside_the_product() -> None:
    x = torch.ones(1, 3, 64, 64)
    x[..., 16:48, 16:48] = 0.2  # a dark product ...
    x[..., 28:36, 28:36] = 1.0  # ... with a white logo inside
    m = product_mask(x, dilate=0, feather=0)
    assert m[0, 0, 32, 32] == 1 and m[0, 0, 20, 20] == 1  # the logo is product, not background
    assert m[0, 0, 2, 2] == 0 and m[0, 0, 60, 10] == 0
    soft = product_mask(x, dilate=1, feather=1.0)
    row = soft[0, 0, 32]
    assert row[11] < 0.01 and 0 < row[14] < 1 and row[17] > 0.99  # grown by 1 px, then a soft edge


class _Identity:
    channels, multiple, scale = 3, 1, 1
    config = {"model": "identity"}

    def __call__(self, images: torch.Tensor, **options: Any) -> torch.Tensor:
        return images.clone()


class _PasteStyle(_Identity):
    """Ignores the content and returns the style texture: perfect style, no product left."""

    config = {"model": "paste"}

    def __init__(self, style: np.ndarray) -> None:
        self.style = torch.from_numpy(style.copy()).permute(2, 0, 1)[None]

    def __call__(self, images: torch.Tensor, **options: Any) -> torch.Tensor:
        h, w = images.shape[-2:]
        return self.style[..., :h, :w].expand(len(images), -1, -1, -1).contiguous()


def test_style_report_numbers(params: Path, tmp_path: Path) -> None:
    from productgen.common.images import to_uint8
    from productgen.data.dataset import PreparedDataset
    from productgen.models.styles import content_batch, load_style

    root = load_params(params).data.out
    ds = PreparedDataset(root)
    images, labels = ds.tensors("train")
    content = to_uint8(content_batch(images[:6], 64, invert=False), low=0.0)
    style = load_style("brick", max_side=None)[:128, :128]
    same = style_report(_Identity(), content, style, tmp_path / "id", labels=labels[:6], classes=ds.classes)
    assert same["content_ssim"] > 0.999 and same["product_ssim"] > 0.999 and same["content_loss"] < 1e-6
    # per category, the same figures on each category's images (what the promotion gate checks one by one)
    cats = same["per_category"]
    assert sum(v["n"] for v in cats.values()) == 6 and set(cats) <= set(ds.classes)
    assert all(v["content_ssim"] > 0.999 and v["style_score"] == pytest.approx(1.0, abs=1e-3) for v in cats.values())
    assert same["style_distance_rel"] == pytest.approx(1.0, abs=1e-4) and same["style_score"] == pytest.approx(
        1.0, abs=1e-3
    )
    pasted = style_report(_PasteStyle(style), content, style, tmp_path / "paste")
    assert pasted["style_distance_rel"] < 0.5  # much closer to the style ...
    assert pasted["product_ssim"] < pasted["ssim_floor"] and pasted["style_score"] > same["style_score"]  # gate says no
    assert pasted["style_score"] == pytest.approx(
        pasted["style_distance_rel"] + 10 * (pasted["ssim_floor"] - pasted["product_ssim"]), abs=1e-6
    )
    for name in ("metrics.json", "report.md", "before_after.png"):
        assert (tmp_path / "id" / name).is_file()
    assert json.loads((tmp_path / "id" / "metrics.json").read_text())["primary_metric"] == "style_score"
    grid = Image.open(tmp_path / "id" / "before_after.png")
    assert grid.height == 2 * 128 + 2 and grid.width > 6 * 128


def test_masked_ssim_is_the_ssim_of_the_masked_pixels() -> None:
    """A full mask gives metrics.quality.ssim's number; a mask over an untouched region gives 1."""
    from productgen.evaluation.style import masked_ssim
    from productgen.metrics.quality import ssim

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 40, 40, generator=g), torch.rand(2, 1, 40, 40, generator=g)
    full = torch.ones(2, 1, 40, 40)
    assert float(masked_ssim(a, b, full)) == pytest.approx(float(ssim(a, b)), abs=1e-6)
    c = a.clone()
    c[..., 20:, :] = b[..., 20:, :]  # the bottom half changed, the top half kept
    top = torch.zeros_like(full)
    top[..., :10, :] = 1  # rows the 11x11 window never sees change
    assert float(masked_ssim(c, a, top)) == pytest.approx(1.0, abs=1e-5)
    assert float(masked_ssim(c, a, 1 - top)) < 0.7


def test_evaluator_scores_the_view_the_model_trained_on(
    style_params: Path, trained: dict[str, Path], tmp_path: Path
) -> None:
    """The style evaluator shows each model its training view (style.image_size, dark-on-white) and reports
    content SSIM, product SSIM and the style distance, overall and per category."""
    from productgen.evaluation import dispatch as evaluators

    p = load_params(style_params, {"evaluate.max_real": 6})
    for task in ("style", "adain"):
        m = evaluators.style(p, task, trained[task] / "model", Path(p.data.out), tmp_path / task, None, False)
        assert m["content_size"] == 32 and m["content_inverted"] is False and m["images"] >= 2
        for key in ("content_ssim", "product_ssim"):
            assert 0.0 < m[key] < 1.0, (task, key, m[key])
        assert m["style_distance_rel"] > 0 and m["style_score"] >= m["style_distance_rel"]
        assert all("product_ssim" in v for v in m["per_category"].values())
        assert "product_ssim" in (tmp_path / task / "report.md").read_text()
        assert Image.open(tmp_path / task / "before_after.png").height == 2 * 128 + 2


def _app() -> typer.Typer:
    from productgen.cli.stylize import stylize_cmd

    app = typer.Typer()
    app.command("stylize")(stylize_cmd)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the app into the single command
        pass

    return app


def _photos(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "bags").mkdir(parents=True)
    for i in range(3):
        arr = np.full((36, 44, 3), 255, np.uint8)
        arr[8:28, 10:34] = rng.integers(0, 200, 3)
        Image.fromarray(arr).save(root / ("bags" if i else ".") / f"p{i}.png")
    Image.fromarray(np.full((30, 30), 90, np.uint8)).save(root / "gray.jpg")
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    return root


def test_stylize_cli(trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from productgen.cli.stylize import BUILTIN
    from productgen.models.styles import BUILTIN_STYLES

    assert tuple(BUILTIN_STYLES) == BUILTIN  # --help lists the real built-in styles
    src = _photos(tmp_path / "in")
    before = tree_digest(src)
    runner = CliRunner()
    out, grid = tmp_path / "out", tmp_path / "grid.png"
    r = runner.invoke(
        _app(),
        [
            "stylize",
            "--in",
            str(src),
            "--out",
            str(out),
            "--style",
            "coffee",
            "--model",
            str(trained["adain"] / "model"),
            "--alpha",
            "0.7",
            "--grid",
            str(grid),
            "-q",
            "--device",
            "cpu",
            "--batch-size",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "4 images stylised" in r.output and "1 skipped" in r.output and "broken.jpg" in r.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "bags/p1.png",
        "bags/p2.png",
        "gray.png",
        "p0.png",
    ]
    assert np.asarray(Image.open(out / "p0.png")).shape == (36, 44, 3) and grid.is_file()
    assert tree_digest(src) == before  # inputs untouched
    r = runner.invoke(
        _app(),
        [
            "stylize",
            "--in",
            str(src),
            "--out",
            str(tmp_path / "o2"),
            "--model",
            str(trained["style"] / "model"),
            "--size",
            "32",
            "--no-preserve-product",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert max(Image.open(tmp_path / "o2" / "p0.png").size) == 32
    monkeypatch.chdir(tmp_path)  # no artifacts/train/adain/model here
    monkeypatch.setenv("PRODUCTGEN_CHAMPIONS", str(tmp_path / "none"))  # and no shipped champion (champions/)
    cases = [
        (["--style", "coffee"], "train it with: productgen train adain"),
        (["--style", "coffee", "--model", str(trained["style"] / "model")], "drop --style"),
        (["--model", str(trained["adain"] / "model")], "--style"),
        (["--model", str(trained["adain"] / "model"), "--style", "nope"], "neither a built-in style"),
        ([], "pass --style"),
    ]
    for extra, expected in cases:
        r = runner.invoke(_app(), ["stylize", "--in", str(src), "--out", str(tmp_path / "o3"), "-q", *extra])
        assert r.exit_code == 2 and expected in r.output, (extra, r.output)


def test_compiled_predictor_matches_eager(trained: dict[str, Path]) -> None:
    """``stylize --compile``: the compiled network gives the eager network's images (to one grey level)."""
    from productgen.models.predict import compile_predictor, load_predictor

    eager = load_predictor(trained["style"] / "model", "cpu")
    compiled = compile_predictor(load_predictor(trained["style"] / "model", "cpu"))
    assert compiled.net is not eager.net and type(compiled.net).__name__ == "OptimizedModule"
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))
    diff = (compiled(x).int() - eager(x).int()).abs()
    assert int(diff.max()) <= 1, int(diff.max())
