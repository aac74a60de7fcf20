"""Shared fixtures: offline settings, a small catalog of real image files in every supported mode, and the
bad-file kinds a seller upload folder really contains."""

from __future__ import annotations

import hashlib
import io
import os

# Under pytest-xdist (make test runs one worker per core) each worker, and every process it starts, computes on one
# thread: two workers of two threads each on a 2-core machine run far slower than either alone.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
for var, value in (
    ("GIT_AUTHOR_NAME", "productgen-tests"),
    ("GIT_AUTHOR_EMAIL", "tests@productgen.invalid"),
    ("GIT_COMMITTER_NAME", "productgen-tests"),
    ("GIT_COMMITTER_EMAIL", "tests@productgen.invalid"),
):
    os.environ.setdefault(var, value)

# One throw-away MLflow store for the whole test session (never the project's ./mlflow.db).
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='productgen-mlflow-')}/mlflow.db"

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def builtin_available() -> bool:
    return (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file() or (
        ROOT / "data/fashion-mnist/train-images-idx3-ubyte.gz"
    ).is_file()


def builtin_dir() -> Path:
    local = ROOT / "data/fashion-mnist"
    return local if (local / "train-images-idx3-ubyte.gz").is_file() else FASHION_MNIST


needs_builtin = pytest.mark.skipif(
    not builtin_available(), reason="built-in dataset not installed: apt-get install dataset-fashion-mnist"
)


def product_image(seed: int, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    """A synthetic 'product': a coloured blob with texture on a white background, different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3)
    mask = ((yy - cy) / (h * 0.35)) ** 2 + ((xx - cx) / (w * 0.3)) ** 2 < 1
    colour = rng.integers(0, 200, size=3)
    arr = np.full((h, w, 3), 255, np.uint8)
    arr[mask] = np.clip(colour + rng.integers(-30, 30, size=(mask.sum(), 3)), 0, 255)
    return Image.fromarray(arr).convert(mode) if mode != "RGB" else Image.fromarray(arr)


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A valid PNG header declaring huge dimensions over a tiny body: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def write_good_folder(root: Path, categories: dict[str, int], size: tuple[int, int] = (40, 30)) -> None:
    """``root/<category>/<i>.<ext>`` with a rotation of formats and modes, all decodable and distinct."""
    formats = [
        ("png", "PNG", "RGB"),
        ("jpg", "JPEG", "RGB"),
        ("webp", "WEBP", "RGB"),
        ("png", "PNG", "RGBA"),
        ("png", "PNG", "L"),
        ("png", "PNG", "P"),
        ("jpg", "JPEG", "CMYK"),
        ("png", "PNG", "LA"),
    ]
    seed = 0
    for cat, n in categories.items():
        (root / cat).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ext, fmt, mode = formats[(seed) % len(formats)]
            im = product_image(seed, size)
            im = im.convert(mode)
            kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
            (root / cat / f"{i:03d}.{ext}").write_bytes(encode(im, fmt, **kw))
            seed += 1


BAD_FILES = {
    "zero-byte": "empty file",
    "truncated-jpeg": "truncated",
    "truncated-png": "truncated",
    "text-as-image": "not a JPEG, PNG or WebP",
    "bomb": "decompression bomb",
    "broken-link": "broken symlink",
    "fifo": "not a regular file",
    "outside-link": "outside the catalog root",
    "gif": "not a JPEG, PNG or WebP",
    "blank": "blank or constant",
    "duplicate": "duplicate content",
}


def write_bad_files(root: Path, category: str, outside: Path) -> dict[str, str]:
    """One file of each bad kind in ``root/category``; returns file name -> expected reason fragment."""
    d = root / category
    d.mkdir(parents=True, exist_ok=True)
    good_jpeg = encode(product_image(1000, (64, 48)), "JPEG", quality=90)
    good_png = encode(product_image(1001, (64, 48)), "PNG")
    names = {
        "zero-byte": "empty.jpg",
        "truncated-jpeg": "truncated.jpg",
        "truncated-png": "truncated.png",
        "text-as-image": "notes.jpg",
        "bomb": "bomb.png",
        "broken-link": "broken.png",
        "fifo": "pipe.png",
        "outside-link": "escape.png",
        "gif": "anim.webp",
        "blank": "blank.png",
        "duplicate": "copy.png",
    }
    (d / names["zero-byte"]).write_bytes(b"")
    (d / names["truncated-jpeg"]).write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (d / names["truncated-png"]).write_bytes(good_png[: len(good_png) // 2])
    (d / names["text-as-image"]).write_text("this is not an image\n")
    (d / names["bomb"]).write_bytes(png_with_size(100_000, 100_000))
    os.symlink(d / "does-not-exist.png", d / names["broken-link"])
    os.mkfifo(d / names["fifo"])  # reading it would block forever: must be refused unread
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(encode(product_image(1002), "PNG"))
    os.symlink(outside / "secret.png", d / names["outside-link"])
    (d / names["gif"]).write_bytes(encode(product_image(1003), "GIF"))
    Image.new("RGB", (32, 32), (255, 255, 255)).save(d / names["blank"])
    first = next(p for p in sorted((root).rglob("*.png")) if p.parent.name != category)
    shutil.copyfile(first, d / names["duplicate"])
    return {names[k]: BAD_FILES[k] for k in names}


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> sha256 (or link target / 'dir') for every entry: proves a source tree was left untouched."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        elif not p.is_file():
            out[rel] = "special"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(*args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed ``productgen`` command as a user would."""
    exe = BIN / "productgen"
    proc = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"productgen {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def catalog_folder(tmp_path: Path) -> Callable[..., Path]:
    def make(categories: dict[str, int] | None = None, size: tuple[int, int] = (40, 30)) -> Path:
        root = tmp_path / "shop"
        write_good_folder(root, categories or {"bags": 6, "shoes": 6, "shirts": 6}, size)
        return root

    return make


# A tiny prepared dataset (3 categories x 12 images, 28 px) and params for fast GAN runs.
TINY = """\
data:
  out: {prepared}
train:
  batch_size: 8
  log_every: 2
  sample_every: 3
  checkpoint_every: 2
  ema_decay: 0.9
  device: cpu
gan:
  z_dim: 16
  g_channels: 16
  d_channels: 16
  max_channels: 32
  embed_dim: 16
  diffaugment: color,translation,cutout
"""


@pytest.fixture(scope="session")
def params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gan")
    write_good_folder(root / "shop", {"bags": 12, "shoes": 12, "shirts": 12}, size=(28, 28))
    from productgen.config import DataConfig
    from productgen.data.prepare import prepare

    prepare(
        DataConfig(source="folder", input=str(root / "shop"), out=str(root / "prepared"), mode="L", resolution=28),
        show_progress=False,
    )
    path = root / "params.yaml"
    path.write_text(TINY.format(prepared=root / "prepared"))
    return path


# The slowest scheduling units, in seconds (2026-12-04: under two workers in a fresh clone's .ci/run, except
# test_dvc.py, timed alone after the DVC experiments merged into it; every other file takes under 40 s). Later runs
# moved some (test_dvc.py 234 s under two workers, test_flow.py 116 s) without changing which go first. Only the
# order uses them: xdist hands the units out in this order, longest first, so that a long
# file is not the last one started while the other worker has nothing left (xdist's default, files with the most
# tests first, started the 76-s single test of test_review_flow.py last). Stale figures cost time, never a result.
SLOW_UNITS = {
    "tests/team": 228,
    "tests/integration/test_dvc.py": 200,
    "tests/integration/test_approval_loop.py": 149,
    "tests/integration/test_flow.py": 140,
    "tests/integration/test_retrain_loop.py": 119,
    "tests/integration/test_tune.py": 82,
    "tests/model/test_gan.py": 80,
    "tests/integration/test_registry.py": 80,
    "tests/web/test_review_flow.py": 76,
    "tests/data/test_builtin.py": 57,
    "tests/model/test_evaluate.py": 57,
    "tests/web/test_web.py": 45,
    "tests/faults/test_io_faults.py": 44,
    "tests/integration/test_serve.py": 44,
    "tests/integration/test_serve_images.py": 40,
}


def _unit(nodeid: str) -> str:
    """The scheduling unit of a test: its file, or tests/team for the team stack's files."""
    path = nodeid.split("::", 1)[0]
    return "tests/team" if path.startswith("tests/team/") else path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest units first (SLOW_UNITS), each unit's tests in their file order; the rest as collected. Every xdist
    worker sorts the same way, so their collections stay identical (the controller schedules the workers' order). A
    run without xdist keeps the file order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    items.sort(key=lambda item: -SLOW_UNITS.get(_unit(item.nodeid), 0))  # stable: file order kept within a unit


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` with one exception: tests/team is one unit. Its files share a session stack of real
    servers (PostgreSQL, SeaweedFS, MLflow, Prefect, about a minute to start); split over two workers, each would
    start its own on the same 2 cores. The units go out in collection order (longest first, above), not xdist's
    most-tests-first."""
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False

    class TeamTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(super()._split_scope(nodeid))

    return TeamTogether(config, log)  # type: ignore[arg-type]
