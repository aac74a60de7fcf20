"""The built-in Fashion-MNIST dataset end to end, and the paired views against the reference baselines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from productgen.config import ViewsConfig
from productgen.data import fashion_mnist
from productgen.data.dataset import PreparedDataset
from productgen.data.views import PairedViews
from tests.conftest import FASHION_MNIST, ROOT, builtin_dir, needs_builtin, run_cli

pytestmark = needs_builtin


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("builtin") / "prepared"
    p = run_cli(
        "data",
        "prepare",
        "--params",
        str(ROOT / "params.yaml"),
        "--input",
        str(builtin_dir()),
        "--out",
        str(out),
        "--quiet",
    )
    assert p.returncode == 0, p.stderr
    assert "prepared 70,000 images (train 53,275, val 6,725, test 10,000) in 10 categories" in p.stdout
    return out


def test_builtin_prepare_and_validate(prepared: Path, tmp_path: Path) -> None:
    ds = PreparedDataset(prepared)
    assert ds.classes == list(fashion_mnist.CLASSES)
    x, y = ds.tensors("test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.uint8
    # the official test split, in its original order and labels
    official = fashion_mnist.load(builtin_dir())
    assert torch.equal(x[:, 0], torch.from_numpy(official.test_images.copy()))
    assert torch.equal(y, torch.from_numpy(official.test_labels.astype("int64")))
    # train / val: a content-hash split of each category's 6,000 official training images, 1/9 to val (667 on
    # average, binomial sd 24); the achieved shares are recorded and validated
    assert all(600 <= n <= 740 for n in torch.bincount(ds.tensors("val")[1]).tolist())
    fractions = ds.meta["split_fractions"]
    assert set(fractions) == set(fashion_mnist.CLASSES) and all(f["n"] == 6000 for f in fractions.values())
    v = run_cli(
        "data",
        "validate",
        "--params",
        str(ROOT / "params.yaml"),
        "--prepared",
        str(prepared),
        "--out",
        str(tmp_path / "report"),
    )
    assert v.returncode == 0, v.stderr
    assert v.stdout.startswith("validation passed: 37/37 checks passed on 70,000 files")
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["valid"] == 1 and metrics["images"] == 70_000
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "preview.png").is_file()


def test_views_reproduce_reference_baselines(prepared: Path) -> None:
    """ANCHORS.md: on the test split, bicubic 2x 19.36 dB / 0.780, 4x 16.05 / 0.504, noise 15/25/50 26.10/21.78/16.13."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    x, y = PreparedDataset(prepared).tensors("test")
    reference = {
        "sr2": (19.36, 0.780),
        "sr4": (16.05, 0.504),
        "noise15": (26.10, 0.699),
        "noise25": (21.78, 0.607),
        "noise50": (16.13, 0.458),
    }
    for kind, (psnr_ref, ssim_ref) in reference.items():
        v = PairedViews(x, y, kind, ViewsConfig()).view.float()
        mse = ((v - x.float()) ** 2).mean(dim=(1, 2, 3))
        psnr = (10 * torch.log10(255.0**2 / mse)).mean().item()
        s = ssim(v / 255, x.float() / 255, data_range=1.0).item()
        assert abs(psnr - psnr_ref) < 0.02, (kind, psnr)
        assert abs(s - ssim_ref) < 0.002, (kind, s)


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fetch_copies_the_package_byte_for_byte(tmp_path: Path) -> None:
    dest = fashion_mnist.fetch(tmp_path / "raw")
    for src in sorted(FASHION_MNIST.glob("*.gz")):
        assert hashlib.sha256((dest / src.name).read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
