"""Paired views are deterministic per image, independent of batching, and shaped like the clean images."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from productgen.cli import app
from productgen.config import ViewsConfig, load_params
from productgen.data.dataset import PreparedDataset
from productgen.data.views import PairedViews, make_view, view_kinds


def _images(n: int = 6, c: int = 1, size: int = 28) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)


def test_every_kind_keeps_shape_and_dtype() -> None:
    cfg = ViewsConfig()
    for c in (1, 3):
        x = _images(c=c)
        for kind in view_kinds(cfg):
            v = make_view(x, kind, cfg)
            assert v.shape == x.shape and v.dtype == torch.uint8, kind
            if kind != "edges":
                assert not torch.equal(v, x), kind


def test_noise_depends_on_index_not_on_batch() -> None:
    cfg = ViewsConfig()
    x = _images(8)
    whole = make_view(x, "noise25", cfg, torch.arange(8))
    halves = torch.cat(
        [make_view(x[:3], "noise25", cfg, torch.arange(3)), make_view(x[3:], "noise25", cfg, torch.arange(3, 8))]
    )
    assert torch.equal(whole, halves)
    again = PairedViews(x, torch.zeros(8, dtype=torch.long), "noise25", cfg, batch=5).view
    assert torch.equal(whole, again)
    other_seed = make_view(x, "noise25", ViewsConfig(seed=1), torch.arange(8))
    assert not torch.equal(whole, other_seed)


def test_noise_has_requested_sigma() -> None:
    x = torch.full((16, 1, 28, 28), 128, dtype=torch.uint8)
    v = make_view(x, "noise25", ViewsConfig())
    assert abs((v.float() - 128).std().item() - 25.0) < 0.5


def test_edges_are_dark_lines_on_white() -> None:
    x = torch.zeros((1, 1, 28, 28), dtype=torch.uint8)
    x[:, :, 8:20, 8:20] = 255
    e = make_view(x, "edges", ViewsConfig())
    assert e[0, 0, 0, 0] == 255 and e[0, 0, 14, 14] == 255  # flat areas are white
    assert (e[0, 0, 14, 7:9] == 0).any()  # the square's border is drawn


def test_export_writes_the_evaluated_view_and_never_overwrites(params: Path, tmp_path: Path) -> None:
    """`productgen data export` writes exactly the test-split view the reports score, named by category."""
    p = load_params(params)
    out = tmp_path / "demo"
    args = ["data", "export", "--params", str(params), "--view", "noise25", "--n", "50", "--out", str(out)]
    r = CliRunner().invoke(app, [*args, "--with-clean"])
    assert r.exit_code == 0, r.output
    images, _ = PreparedDataset(Path(p.data.out)).tensors("test")
    files = sorted((out / "noise25").glob("*.png"))
    assert len(files) == len(images) >= 3 and files[0].name.startswith("00000-")  # --n beyond the split: all
    want = make_view(images, "noise25", p.views, torch.arange(len(images)))
    for i, f in enumerate(files):
        assert np.array_equal(np.asarray(Image.open(f)), want[i, 0].numpy()), f
        assert np.array_equal(np.asarray(Image.open(out / "clean" / f.name)), images[i, 0].numpy())
    before = {f: f.read_bytes() for f in files}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "never overwrite" in again.output
    assert {f: f.read_bytes() for f in files} == before
    bad = CliRunner().invoke(
        app, ["data", "export", "--params", str(params), "--view", "sepia", "--out", str(tmp_path / "o2")]
    )
    assert bad.exit_code == 2 and "sepia" in bad.output and not (tmp_path / "o2").exists()
