"""Inputs, outputs and serving under faults: what the user sees (exit code, one line, no traceback) and that
nothing is lost (source data untouched, no partial or staging files left behind).

- large photos: tiled inference equals whole-image inference (GroupNorm, InstanceNorm, 2x upscaling); a
  6000x6000 photo goes through ``productgen enhance`` in bounded memory (peak RSS of the real subprocess);
  a 7000x7000 PNG of a few KB is refused as a decompression bomb without aborting the folder;
- full disk: a small tmpfs mounted by the test (root only; otherwise skipped with one line): ``enhance`` and
  ``data prepare`` (before it starts, and when the disk fills mid-run) end in one line, no staging folder left;
- unwritable output: a file in the way, a read-only file system;
- the smaller items of issue 13: long catalog names rejected per row, symlinks leaving --in listed, learning
  rates and damaged weights as one line, serving limits (message length, JSON depth, seed range), and the
  infra start scripts refusing the example placeholder secrets.

Budget: about 45 s on 2 cores, most of it the 6000x6000 photo (36 MP through a real, if tiny, U-Net).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from productgen.apply.folders import apply_to_folder, bytes_per_pixel, predict_image, run_batch
from productgen.common.errors import UserError
from productgen.models.io import save_model
from productgen.models.restore import ImagePredictor, UNet
from tests.conftest import BIN, ROOT

PRODUCTGEN = str(BIN / "productgen")
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}


# ---------------------------------------------------------------------------------------------------- helpers


def run(
    args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 240
) -> tuple[int, str, str, float]:
    """Run a command to the end; (exit code, stdout, stderr, peak RSS in MB of that process alone)."""
    with subprocess.Popen(
        args, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        out_buf: list[str] = []
        err_buf: list[str] = []
        readers = [
            threading.Thread(target=lambda s=s, b=b: b.append(s.read()))
            for s, b in ((proc.stdout, out_buf), (proc.stderr, err_buf))
        ]
        for t in readers:
            t.start()
        deadline = time.monotonic() + timeout
        # The high-water mark of the command's own memory (VmHWM belongs to its address space). Not wait4's
        # ru_maxrss: exec keeps the forking process's high-water mark there, so a pytest process grown to 4 GB by
        # earlier tests made every child look 4 GB.
        hwm_kb = 0
        while True:
            with contextlib.suppress(OSError, ValueError, StopIteration):
                status_text = Path(f"/proc/{proc.pid}/status").read_text()
                hwm_kb = max(
                    hwm_kb, int(next(ln for ln in status_text.splitlines() if ln.startswith("VmHWM:")).split()[1])
                )
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{args} did not finish in {timeout} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        for t in readers:
            t.join()
    return proc.returncode, out_buf[0], err_buf[0], (hwm_kb or usage.ru_maxrss) / 1024


def assert_one_line(stderr: str, *fragments: str) -> str:
    """stderr is exactly one ``error:`` line (progress bars aside) holding every fragment; no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def restore_model(folder: Path, norm: str = "none", width: int = 2, levels: int = 1, view: str = "noise25") -> Path:
    """A real restore model folder (the tiny U-Net of ``productgen train restore``, random non-zero head)."""
    torch.manual_seed(0)
    net = UNet(3, width, width * 2, levels, 1, norm)
    for p in net.head.parameters():
        torch.nn.init.normal_(p, std=0.05)
    cfg = {
        "model": "restore",
        "channels": 3,
        "view": view,
        "resolution": 64,
        "restore": {"channels": width, "max_channels": width * 2, "levels": levels, "blocks": 1, "norm": norm},
    }
    return save_model(folder, {"restore": net}, cfg)


def structured_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Stripes, a gradient, noise and a white patch: statistics that differ from tile to tile."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(xx / 13.0), 128 + 100 * np.cos(yy / 17.0), (xx + yy) % 256], -1)
    img = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    img[h // 4 : h // 2, w // 3 : 2 * w // 3] = 250
    return img


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Any]:
    """``mount(size)`` -> a fresh tmpfs of that size (root only: otherwise the test is skipped with one line)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("full-disk checks mount a small tmpfs, which needs root")
    mounted: list[Path] = []

    def mount(size: str, options: str = "") -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


# ------------------------------------------------------------------------------------------------ large inputs


def _pix2pix_predictor() -> Any:
    from productgen.models.translate import TranslatePredictor, UNetGenerator

    torch.manual_seed(1)
    net = UNetGenerator(3, 3, 3, 8, 32, "instance", 0.0).eval()
    return TranslatePredictor({"ab": net}, {"model": "pix2pix", "channels": 3}, torch.device("cpu"))


@pytest.mark.parametrize("kind", ["restore-groupnorm", "restore-sr2", "pix2pix-instancenorm"])
def test_tiles_equal_whole_image_inference(kind: str) -> None:
    """The tiled path, forced onto an image that also fits whole, gives the whole-image output (up to one grey
    level of float rounding) with GroupNorm / InstanceNorm: their statistics are gathered over the whole image.
    Normalising each tile by itself (exact=False) visibly differs, so the statistics are what this checks."""
    if kind == "pix2pix-instancenorm":
        pred, margin = _pix2pix_predictor(), 64
    else:
        torch.manual_seed(0)
        net = UNet(3, 4, 8, 2, 1, "group")
        for p in net.head.parameters():
            torch.nn.init.normal_(p, std=0.1)
        view = "sr2" if kind == "restore-sr2" else "noise25"
        pred, margin = ImagePredictor(net, {"channels": 3, "model": "restore"}, view, 2, "cpu"), 32
    img = structured_image(150, 203) if pred.scale == 1 else structured_image(100, 130)
    with torch.inference_mode():
        whole = run_batch(pred, [img])[0]
        tiled = predict_image(pred, img, tile=64, margin=margin, blend=16)
        local = predict_image(pred, img, tile=64, margin=margin, blend=16, exact=False)
    assert tiled.shape == whole.shape == (img.shape[0] * pred.scale, img.shape[1] * pred.scale, 3)
    diff = np.abs(tiled.astype(int) - whole.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
    assert np.abs(local.astype(int) - whole.astype(int)).max() >= 3  # per-tile statistics are not the same


def test_memory_budget_tiles_a_folder_and_matches_one_pass(tmp_path: Path) -> None:
    """apply_to_folder (what enhance, translate and the web page's enhance call) tiles an image over the budget
    and keeps one pass for one under it; both equal whole-image inference."""
    from productgen.models.predict import load_predictor

    pred = load_predictor(restore_model(tmp_path / "model", norm="group", width=4))
    src = tmp_path / "in"
    src.mkdir()
    big, small = structured_image(400, 360, 1), structured_image(40, 50, 2)
    Image.fromarray(big).save(src / "big.png")
    Image.fromarray(small).save(src / "small.png")
    budget = bytes_per_pixel(pred) * 320 * 320 / 2**20  # a 400x360 image does not fit (tiles of 192), 40x50 does
    report = apply_to_folder(pred, src, tmp_path / "out", memory_mb=budget, show_progress=False)
    assert [p.name for p in report.tiled] == ["big.png"] and len(report.written) == 2 and not report.failed
    with torch.inference_mode():
        for name, arr in (("big.png", big), ("small.png", small)):
            got = np.asarray(Image.open(tmp_path / "out" / name))
            assert np.abs(got.astype(int) - run_batch(pred, [arr])[0].astype(int)).max() <= 1, name
    report = apply_to_folder(pred, src, tmp_path / "out2", memory_mb=0.01, show_progress=False)
    assert not report.written and len(report.failed) == 2  # reported and skipped, the folder went on
    assert all("raise --memory-mb" in reason for _, reason in report.failed)


def test_7000px_png_of_a_few_kb_is_refused_as_a_bomb(tmp_path: Path) -> None:
    from productgen.data.decode import Rejected, decode

    im = Image.new("L", (7000, 7000), 255)
    import io

    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=9)
    data = buf.getvalue()
    assert len(data) < 100_000 and 7000 * 7000 < 50_000_000  # the pixel count alone is under the 50 MP guard
    with pytest.raises(Rejected, match="possible decompression bomb"):
        decode(data, "RGB", 50_000_000)
    photo = tmp_path / "photo.jpg"
    _big_photo(photo, 2100)
    assert decode(photo.read_bytes(), "RGB", 50_000_000).width == 2100  # a real 4.4 MP photo still decodes


def _big_photo(path: Path, n: int = 6000) -> None:
    """A 6000x6000 photo-like JPEG (gradients plus sensor-like noise), made quickly from tiled noise."""
    ramp = np.linspace(0, 200, n, dtype=np.float32)
    noise = np.random.default_rng(0).integers(0, 40, (256, 256, 3), dtype=np.uint8)
    img = np.tile(noise, (n // 256 + 1, n // 256 + 1, 1))[:n, :n]
    img = (img + (ramp[:, None, None] * 0.5 + ramp[None, :, None] * np.array([0.2, 0.4, 0.6], np.float32))).astype(
        np.uint8
    )
    Image.fromarray(img).save(path, quality=85)


def test_6000px_photo_through_enhance_in_bounded_memory(tmp_path: Path) -> None:
    """``productgen enhance`` on a folder with a 6000x6000 photo, a small one, a 7000x7000 decompression bomb
    and a symlink out of the folder: exit 0, both photos written at full size, the bomb reported, the link
    listed, the inputs untouched, and the process's peak RSS bounded (whole-image inference of this model on
    36 MP would need about 5 GB of activations alone; before tiling it was killed at 23 GB)."""
    src = tmp_path / "in"
    src.mkdir()
    _big_photo(src / "big.jpg")
    Image.fromarray(structured_image(64, 80)).save(src / "small.png")
    Image.new("P", (7000, 7000), 0).save(src / "bomb.png")
    outside = tmp_path / "secret.png"
    Image.fromarray(structured_image(16, 16)).save(outside)
    (src / "link.png").symlink_to(outside)
    before = tree_digest(src)
    model = restore_model(tmp_path / "model", width=1)
    rc, out, err, peak_mb = run(
        [
            PRODUCTGEN,
            "enhance",
            "--in",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--task",
            "denoise",
            "--model",
            str(model),
            "--memory-mb",
            "256",
            "-q",
        ]
    )
    assert rc == 0, (out, err)
    assert "Traceback" not in err
    assert "2 written" in out and "1 failed" in out, out
    assert "bomb.png: declares 7000x7000 pixels" in out and "decompression bomb" in out, out
    assert "skipped:" in out and "link.png" in out and "outside the input folder" in out, out
    assert "1 large image(s) processed in tiles" in out, out
    with Image.open(tmp_path / "out" / "big.png") as im:
        assert im.size == (6000, 6000)
    assert (tmp_path / "out" / "small.png").is_file() and not (tmp_path / "out" / "link.png").exists()
    assert tree_digest(src) == before
    assert peak_mb < 1600, f"peak RSS {peak_mb:.0f} MB"


# ---------------------------------------------------------------------------------------------------- full disk


def _noise_folder(root: Path, n: int, size: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"n{i}.png")
    return root


def test_full_disk_enhance_is_one_line_and_leaves_no_partial_file(tmp_path: Path, tmpfs: Any) -> None:
    disk = tmpfs("600k")
    src = _noise_folder(tmp_path / "in", 4, 256)  # noise PNGs of ~200 KB each: the third does not fit
    before = tree_digest(src)
    model = restore_model(tmp_path / "model")
    rc, out, err, _ = run(
        [
            PRODUCTGEN,
            "enhance",
            "--in",
            str(src),
            "--out",
            str(disk / "out"),
            "--task",
            "denoise",
            "--model",
            str(model),
            "-q",
        ]
    )
    assert rc == 1, (out, err)
    assert_one_line(err, str(disk / "out"), "no space left on the device", "free some space")
    leftovers = [p.name for p in (disk / "out").iterdir() if ".tmp-" in p.name]
    assert not leftovers
    for p in (disk / "out").glob("*.png"):  # what was written is whole
        Image.open(p).load()
    assert tree_digest(src) == before


def test_full_disk_prepare_refuses_before_starting_and_cleans_up_mid_run(tmp_path: Path, tmpfs: Any) -> None:
    """Too little space at the start: one line, nothing written. The disk filling up while prepare runs (a
    filler process takes the rest once the staging folder appears): one line (an ENOSPC write, no SIGBUS from
    a memory map), exit 1, the staging folder removed; the source untouched either way."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for cat in ("bag", "shoe"):
        (src / cat).mkdir(parents=True)
        for i in range(150):
            Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(src / cat / f"{i}.jpg", quality=90)
    before = tree_digest(src)
    small = tmpfs("4m")
    args = [
        PRODUCTGEN,
        "data",
        "prepare",
        "--source",
        "folder",
        "-i",
        str(src),
        "--mode",
        "RGB",
        "--resolution",
        "128",
        "-q",
    ]
    rc, out, err, _ = run([*args, "-o", str(small / "ds")])
    assert rc == 2, (out, err)
    assert_one_line(err, "MB free", "prepare needs about", "free some space")
    assert list(small.iterdir()) == []

    disk = tmpfs("56m")  # 300 images x 48 KB x 2 (+16 MB margin) pass the check; the filler takes the rest
    proc_args = [*args, "-o", str(disk / "ds")]
    filled = threading.Event()

    def fill() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(p.name.startswith(".ds.staging-") for p in disk.iterdir()):
            time.sleep(0.002)
        try:
            with open(disk / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * (1 << 20))
        except OSError:
            filled.set()

    filler = threading.Thread(target=fill)
    filler.start()
    rc, out, err, _ = run(proc_args)
    filler.join()
    assert filled.is_set()
    assert rc == 1, (rc, out, err)  # not 135 (SIGBUS)
    assert_one_line(err, "no space left on the device")
    assert [p.name for p in disk.iterdir()] == ["filler"]  # no staging folder, no half dataset
    assert tree_digest(src) == before


# ---------------------------------------------------------------------------------------------- unwritable output


def test_unwritable_outputs_are_one_line(tmp_path: Path, tmpfs: Any) -> None:
    """A file where the output folder should go, and a read-only file system (enhance's writes take the same
    path through cli/common.py's OSError handler: see the full-disk test)."""
    src = _noise_folder(tmp_path / "in" / "bag", 3, 32).parent
    before = tree_digest(src)
    (tmp_path / "afile").write_text("in the way\n")
    args = [PRODUCTGEN, "data", "prepare", "--source", "folder", "-i", str(src), "--mode", "RGB", "-q"]
    rc, out, err, _ = run([*args, "-o", str(tmp_path / "afile" / "ds")])
    assert rc in (1, 2), (out, err)  # 2: prepare's own check of the parent folder, 1: the OSError handler
    assert_one_line(err, str(tmp_path / "afile"))
    readonly = tmpfs("1m", "ro")
    rc, out, err, _ = run([*args, "-o", str(readonly / "ds")])
    assert rc in (1, 2), (out, err)
    assert "read-only file system" in assert_one_line(err, str(readonly)).lower()
    assert tree_digest(src) == before and (tmp_path / "afile").read_text() == "in the way\n"


# ------------------------------------------------------------------------------------------------ smaller items


def test_long_catalog_file_name_is_rejected_per_row(tmp_path: Path) -> None:
    from productgen.config import load_params
    from productgen.data.prepare import prepare

    images = tmp_path / "images"
    images.mkdir()
    rows = ["image,category"]
    for i in range(4):
        Image.fromarray(structured_image(32, 32, i)).save(images / f"ok{i}.png")
        rows.append(f"ok{i}.png,{'bag' if i % 2 else 'shoe'}")
    rows.append(f"{'x' * 300}.png,bag")
    (tmp_path / "catalog.csv").write_text("\n".join(rows) + "\n")
    cfg = load_params(
        ROOT / "params.yaml",
        {
            "data.source": "catalog",
            "data.input": str(tmp_path / "catalog.csv"),
            "data.image_column": "image",
            "data.image_pattern": "{}",
            "data.category_column": "category",
            "data.image_root": str(images),
            "data.out": str(tmp_path / "ds"),
            "data.mode": "RGB",
            "data.resolution": 28,
        },
    ).data
    result = prepare(cfg, show_progress=False)
    assert sum(result.counts.values()) == 4 and result.n_rejected == 1
    rejected = (tmp_path / "ds" / "rejected.csv").read_text()
    assert "over the 255-byte limit" in rejected


def test_symlinks_leaving_the_input_folder_are_listed(tmp_path: Path) -> None:
    from productgen.models.predict import load_predictor

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(structured_image(16, 16)).save(src / "a.png")
    Image.fromarray(structured_image(16, 16, 1)).save(tmp_path / "outside.png")
    (src / "escape.png").symlink_to(tmp_path / "outside.png")
    (src / "dangling.png").symlink_to(tmp_path / "gone.png")
    pred = load_predictor(restore_model(tmp_path / "model"))
    report = apply_to_folder(pred, src, tmp_path / "out", show_progress=False)
    reasons = {p.name: r for p, r in report.skipped}
    assert set(reasons) == {"escape.png", "dangling.png"}
    assert "outside the input folder" in reasons["escape.png"] and "broken symlink" in reasons["dangling.png"]
    assert [p.name for p in report.written] == ["a.png"]


@pytest.mark.parametrize(
    "override", [{"gan.lr_g": -2e-4}, {"restore.lr": 0.0}, {"translate.lr": float("nan")}, {"gan.beta2": 1.5}]
)
def test_bad_learning_rates_are_one_line(override: dict[str, float]) -> None:
    from productgen.config import load_params

    (key,) = override
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        load_params(ROOT / "params.yaml", override)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "header", "empty"])
def test_damaged_weights_are_one_line(tmp_path: Path, damage: str) -> None:
    from productgen.models.predict import load_predictor

    folder = restore_model(tmp_path / "model")
    weights = folder / "restore.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "header": b"\xff" * 16 + data[16:], "empty": b""}[damage])
    with pytest.raises(UserError, match="not a readable safetensors file|cannot read the weights") as err:
        load_predictor(folder)
    assert "\n" not in str(err.value) and str(weights) in str(err.value)


def test_gan_serving_refuses_out_of_range_seeds_and_cuts_messages(tmp_path: Path) -> None:
    """The served GAN's checks: seeds outside 0..2**63-1 (2**63 arrives wrapped to -2**63 after MLflow's cast to
    int64) and a 5 MB category answered in a few hundred bytes."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from productgen.serving.gan_pyfunc import ProductGenerator

    model = ProductGenerator()
    model.classes = ["bag", "sneaker"]
    for seed in (-(2**63), -1):
        with pytest.raises(MlflowException, match="seed must be between 0 and 2\\*\\*63-1"):
            model._validate(pd.DataFrame({"category": ["bag"], "count": [1], "seed": [seed]}))
    assert model._validate(pd.DataFrame({"category": ["bag"], "count": [1], "seed": [2**63 - 1]}))[0][2] == 2**63 - 1
    with pytest.raises(MlflowException) as err:
        model._validate(pd.DataFrame({"category": ["x" * 5_000_000], "count": [1], "seed": [0]}))
    assert len(err.value.message) <= 300


def test_guarded_scoring_server_answers_400_and_short_errors(tmp_path: Path) -> None:
    """The server of ``python -m productgen.serving`` (MLflow's scoring server behind productgen's guard, run by
    uvicorn on loopback in a thread here, as ``main`` does in its own process), with a
    real image model: deeply nested JSON is 400 (the bare scoring server answers 500), a 2 MB non-JSON body and
    a 2 MB bad value come back in a few hundred bytes, an oversized body is 413, a good request is 200."""
    import base64
    import io
    import socket
    import urllib.error
    import urllib.request

    import mlflow

    model = restore_model(tmp_path / "weights")
    mlflow.pyfunc.save_model(
        str(tmp_path / "pyfunc"),
        python_model=str(ROOT / "src/productgen/serving/image_pyfunc.py"),
        artifacts={"model_dir": str(model)},
        pip_requirements=["productgen"],
    )
    import uvicorn

    from productgen.serving.server import build_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = build_app(str(tmp_path / "pyfunc"), max_body=4_000_000)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(body: bytes, ctype: str = "application/json") -> tuple[int, bytes]:
        req = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": ctype})
        try:
            with opener.open(req, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        status, body = post(b'{"dataframe_records": [{"image": ' + b"[" * 200_000 + b"]" * 200_000 + b"}]}")
        assert status == 400 and b"nested deeper" in body and len(body) < 400, (status, body[:300])
        status, body = post(b"not json " * 250_000)
        assert status == 400 and len(body) < 1000, (status, len(body))
        status, body = post(json.dumps({"dataframe_records": [{"image": "A" * 2_000_000}]}).encode())
        assert status == 400 and len(body) < 1000, (status, len(body))
        status, body = post(b"[" + b"1," * 2_500_000 + b"1]")
        assert status == 413 and len(body) < 400, status
        png = io.BytesIO()
        Image.fromarray(structured_image(24, 24)).save(png, "PNG")
        good = {"dataframe_records": [{"image": base64.b64encode(png.getvalue()).decode()}]}
        status, body = post(json.dumps(good).encode())
        assert status == 200 and json.loads(body)["predictions"][0]["width"] == 24, body[:300]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.parametrize(
    "script", ["mlflow/start.sh", "prefect/start.sh", "minio/init.sh", "worker.sh", "postgres/init-databases.sh"]
)
def test_infra_start_scripts_refuse_the_example_placeholders(tmp_path: Path, script: str) -> None:
    """Every start script of the team deployment, given infra/.env.example's values as compose would pass them,
    stops at once with one line naming the variable (before any server, database or user is created)."""
    from tests.team.test_compose import env_file

    example = env_file(ROOT / "infra" / ".env.example")
    pg = f"{example['POSTGRES_USER']}:{example['POSTGRES_PASSWORD']}"
    env = {
        "PATH": os.environ["PATH"],
        **example,
        # mlflow/start.sh
        "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg://mlflow:{example['MLFLOW_DB_PASSWORD']}@db/mlflow",
        "MLFLOW_AUTH_DATABASE_URI": f"postgresql+psycopg://mlflow:{example['MLFLOW_DB_PASSWORD']}@db/mlflow_auth",
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow/artifacts",
        "MLFLOW_AUTH_ADMIN_PASSWORD": example["MLFLOW_ADMIN_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": example["MLFLOW_FLASK_SECRET_KEY"],
        "MLFLOW_WORKER_USERNAME": example["MLFLOW_WORKER_USER"],
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "a.ini"),
        # prefect/start.sh, worker.sh
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{pg}@db/prefect",
        "PREFECT_SERVER_API_AUTH_STRING": example["PREFECT_AUTH_STRING"],
        "PREFECT_API_AUTH_STRING": example["PREFECT_AUTH_STRING"],
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
        "MLFLOW_TRACKING_USERNAME": example["MLFLOW_WORKER_USER"],
        "MLFLOW_TRACKING_PASSWORD": example["MLFLOW_WORKER_PASSWORD"],
        "AWS_SECRET_ACCESS_KEY": example["S3_SECRET_KEY"],
    }
    args = ["sh", str(ROOT / "infra" / script)] + (["productgen"] if script == "worker.sh" else [])
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "example placeholder" in done.stderr and "change-me" not in done.stderr.split(" still holds")[0]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_run_folder_metadata_keeps_no_credentials() -> None:
    """What run folders record of a server (``mlflow.json``'s tracking URI, the tune marker's storage URL)
    goes through these two helpers: the password never reaches the file."""
    from productgen.pipeline.tune import mask_url
    from productgen.tracking.runs import display_uri

    secret = "s3cret-pass-123"
    assert secret not in display_uri(f"http://productgen-worker:{secret}@mlflow:5000")
    assert display_uri(f"http://productgen-worker:{secret}@mlflow:5000") == "http://mlflow:5000"
    assert secret not in mask_url(f"postgresql+psycopg://optuna:{secret}@postgres:5432/optuna")
