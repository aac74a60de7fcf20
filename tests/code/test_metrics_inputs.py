"""Metric inputs: image folders (recursive, PNG/JPEG/WebP, mixed sizes and modes), uint8 tensors, iterables of
batches; the API functions over them, checked with a cheap stand-in extractor instead of the Inception network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from productgen.common.errors import UserError
from productgen.metrics import (
    FeatureExtractor,
    FeatureStats,
    compare,
    compute_features,
    compute_statistics,
    fid_between,
    fid_from_features,
    kid_between,
    list_images,
    to_uint8,
)
from productgen.metrics.images import iter_batches, load_image
from tests.conftest import encode, product_image


def pooled_extractor(calls: list[int] | None = None) -> FeatureExtractor:
    """A stand-in for Inception: 4x4 average pooling of each channel (48 features), counting images seen."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(len(x))
        return F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)

    return FeatureExtractor("pooled", "p1", forward, torch.device("cpu"), dim=48)


def _folder(root: Path, n: int, size: tuple[int, int] = (32, 32), offset: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        product_image(offset + i, size).save(root / f"{i:03d}.png")
    return root


def test_list_images_is_recursive_sorted_and_filters_extensions(tmp_path: Path) -> None:
    root = tmp_path / "gen"
    (root / "b" / "deep").mkdir(parents=True)
    im = product_image(0, (16, 16))
    (root / "z.PNG").write_bytes(encode(im, "PNG"))
    (root / "a.jpg").write_bytes(encode(im, "JPEG"))
    (root / "b" / "c.jpeg").write_bytes(encode(im, "JPEG"))
    (root / "b" / "deep" / "d.webp").write_bytes(encode(im, "WEBP"))
    (root / "notes.txt").write_text("x")
    (root / "anim.gif").write_bytes(encode(im, "GIF"))
    os.symlink(root / "b", root / "loop")  # symlinked folders are not followed
    found = [p.relative_to(root).as_posix() for p in list_images(root)]
    assert found == ["a.jpg", "z.PNG", "b/c.jpeg", "b/deep/d.webp"]


def test_bad_inputs_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="no images found"):
        list_images(tmp_path / "empty")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not a folder"):
        list_images(tmp_path / "file.png")
    with pytest.raises(UserError, match=r"broken\.png: cannot read image"):
        load_image(_broken(tmp_path))
    with pytest.raises(UserError, match="batch size"):
        list(iter_batches(torch.zeros((2, 3, 4, 4), dtype=torch.uint8), 0))


def _broken(tmp_path: Path) -> Path:
    data = encode(product_image(1, (32, 32)), "PNG")
    p = tmp_path / "broken.png"
    p.write_bytes(data[: len(data) // 2])
    return p


def test_every_mode_decodes_to_rgb(tmp_path: Path) -> None:
    for mode in ("RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16"):
        im = product_image(2, (20, 10)).convert("L" if mode == "I;16" else mode)
        if mode == "I;16":
            im = im.convert("I").point(lambda v: v * 256).convert("I;16")
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        p = tmp_path / f"{mode.replace(';', '')}.{fmt.lower()}"
        p.write_bytes(encode(im, fmt))
        arr = load_image(p)
        assert arr.shape == (10, 20, 3) and arr.dtype == np.uint8, mode


def test_folder_with_mixed_sizes_gives_same_features_as_one_by_one(tmp_path: Path) -> None:
    root = _folder(tmp_path / "mixed", 3, (32, 32))
    _folder(root / "big", 2, (48, 40), offset=10)
    net = pooled_extractor()
    feats = compute_features(root, net, batch_size=4)
    single = np.concatenate(
        [net(torch.from_numpy(load_image(p)).permute(2, 0, 1)[None]).numpy() for p in list_images(root)]
    )
    assert feats.shape == (5, 48)
    np.testing.assert_array_equal(feats, single)


def test_tensor_array_iterable_and_folder_inputs_agree(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 7)
    x = torch.stack([torch.from_numpy(load_image(p)).permute(2, 0, 1) for p in list_images(root)])
    net = pooled_extractor()
    ref = compute_features(root, net)
    np.testing.assert_array_equal(compute_features(x, net, batch_size=3), ref)
    np.testing.assert_array_equal(compute_features(x.numpy(), net), ref)
    np.testing.assert_array_equal(compute_features(iter([x[:2], x[2:]]), net, batch_size=1), ref)
    with pytest.raises(ValueError, match="uint8"):
        compute_features(x.float(), net)
    with pytest.raises(UserError, match="no images"):
        compute_features(x[:0], net)


def test_batches_are_split_to_the_batch_size(tmp_path: Path) -> None:
    calls: list[int] = []
    x = torch.zeros((10, 1, 8, 8), dtype=torch.uint8)
    compute_features([x[:9], x[9:]], pooled_extractor(calls), batch_size=4)
    assert calls == [4, 4, 1, 1]


def test_to_uint8_follows_stylegan_rounding() -> None:
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 128, 191, 255, 255]
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0]), low=0.0, high=1.0).tolist() == [0, 128, 255]
    ref = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    assert torch.equal(to_uint8(x), ref)


def test_api_fid_and_kid_between_image_sets(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", 12)
    b = _folder(tmp_path / "b", 10, offset=50)
    net = pooled_extractor()
    fa, fb = compute_features(a, net), compute_features(b, net)
    assert fid_between(a, b, extractor=net) == pytest.approx(fid_from_features(fa, fb), rel=1e-12)
    assert abs(fid_between(a, a, extractor=net)) < 1e-9
    k = kid_between(a, b, extractor=net, kid_subsets=5)
    assert k.subset_size == 10 and k.subsets == 5
    res = compare(a, b, kid=True, extractor=net)
    assert res.n_a == 12 and res.n_b == 10 and res.extractor == "pooled" and res.kid is not None
    assert set(res.to_dict()) >= {"fid", "kid_mean", "kid_std", "n_a", "n_b", "extractor", "extractor_sha"}
    stats = compute_statistics(a, net)
    assert isinstance(stats, FeatureStats) and stats.features is not None  # 12 images <= 48 dims: kept
    assert compare(stats, b, extractor=net).fid == pytest.approx(res.fid, rel=1e-12)
    without = FeatureStats(stats.mu, stats.sigma, stats.n)
    assert compare(without, b, extractor=net).fid == pytest.approx(res.fid, rel=1e-9)
    with pytest.raises(UserError, match="KID needs the features"):
        compare(without, b, kid=True, extractor=net)
