"""apply_to_folder: the shared folder loop of enhance / stylize / translate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from productgen.apply.folders import apply_to_folder, before_after_grid
from productgen.common.errors import UserError


class Invert:
    """A stand-in model with the Predictor interface: inverts and upsamples by ``scale`` (nearest)."""

    def __init__(self, channels: int = 1, multiple: int = 4, scale: int = 1) -> None:
        self.channels, self.multiple, self.scale, self.config = channels, multiple, scale, {}
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, images: torch.Tensor, **options: Any) -> torch.Tensor:
        self.shapes.append(tuple(images.shape))
        assert images.shape[-1] % self.multiple == 0 and images.shape[-2] % self.multiple == 0
        out = 255 - images
        return out.repeat_interleave(self.scale, -1).repeat_interleave(self.scale, -2)


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "shoes").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (30, 22), dtype=np.uint8)).save(src / f"a{i}.png")
    Image.fromarray(rng.integers(0, 255, (17, 40, 3), dtype=np.uint8)).save(src / "shoes" / "red.jpg")
    (src / "broken.jpg").write_bytes(b"not an image")
    return src


@pytest.mark.parametrize("scale", [1, 2])
def test_apply_keeps_names_sizes_and_reports_bad_files(tmp_path: Path, scale: int) -> None:
    src = _folder(tmp_path)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    model = Invert(scale=scale)
    report = apply_to_folder(model, src, tmp_path / "out", batch_size=2, show_progress=False)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in report.written) == [
        "a0.png",
        "a1.png",
        "a2.png",
        "a3.png",
        "a4.png",
        "shoes/red.png",
    ]
    assert [p.name for p, _ in report.failed] == ["broken.jpg"]
    a0 = np.asarray(Image.open(tmp_path / "out" / "a0.png"))
    assert a0.shape == (30 * scale, 22 * scale)
    assert np.array_equal(a0[::scale, ::scale], 255 - np.asarray(Image.open(src / "a0.png")))
    assert max(s[0] for s in model.shapes) <= 2  # batched
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # inputs untouched
    assert before_after_grid(report.pairs, tmp_path / "grid.png") is not None


def test_apply_refuses_output_inside_input(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    with pytest.raises(UserError, match="must not be the input folder"):
        apply_to_folder(Invert(), src, src / "out", show_progress=False)
    with pytest.raises(UserError, match="not a folder"):
        apply_to_folder(Invert(), tmp_path / "missing", tmp_path / "o", show_progress=False)
