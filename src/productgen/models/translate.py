"""Image-to-image translation networks: the pix2pix U-Net and PatchGAN, CycleGAN's ResNet generator, and the
predictor that applies a trained pix2pix or CycleGAN model to images.

The designs follow Isola et al. 2017 (pix2pix) and Zhu et al. 2017 (CycleGAN), scaled to product images of
28-256 px: the U-Net is as deep as the resolution allows (down to a 2x2 bottleneck, 8 levels at most, as the
256 px original), and the PatchGAN's receptive field shrinks with the image (16 px patches at <= 32 px, 34 px
up to 96 px, the paper's 70 px above), so the discriminator still judges local texture rather than the whole
picture. Networks take and return floats in [-1, 1].
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from productgen.common.errors import UserError

Norm = Literal["instance", "batch"]


def _norm(kind: str, channels: int) -> nn.Module:
    """Instance norm by default: the same behaviour in training and inference, whatever the batch size."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=True)


def unet_depth(resolution: int) -> int:
    """Down-sampling levels for ``resolution`` px: to a 2x2 bottleneck (28 -> 4 levels on 32 px), 8 at most."""
    return max(2, min(8, math.ceil(math.log2(max(resolution, 4))) - 1))


def patch_layers(resolution: int) -> int:
    """PatchGAN stride-2 layers: receptive field 16 px (<= 32 px images), 34 px (<= 96 px), else 70 px."""
    return 1 if resolution <= 32 else 2 if resolution <= 96 else 3


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


class UNetGenerator(nn.Module):
    """pix2pix U-Net: ``depth`` stride-2 convolutions down, as many transposed ones up, with skip connections.

    The skips carry the input's layout (edges, silhouettes) straight to the output, which is why the U-Net
    beats a plain encoder-decoder for translation. Inputs whose sides are not multiples of ``2**depth`` are
    reflect-padded and the output cropped back (28 px trains as 32 px), so any size works.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int,
        base: int = 64,
        cap: int = 512,
        norm: str = "instance",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("the U-Net needs at least 2 levels")
        self.depth = depth
        self.multiple = 2**depth
        ch = [min(base * 2**i, cap) for i in range(depth)]
        downs: list[nn.Module] = [nn.Conv2d(in_channels, ch[0], 4, 2, 1)]
        for i in range(1, depth):
            innermost = i == depth - 1
            layers: list[nn.Module] = [nn.LeakyReLU(0.2), nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1, bias=innermost)]
            if not innermost:  # as in pix2pix: no normalisation of the bottleneck (it can be 1x1)
                layers.append(_norm(norm, ch[i]))
            downs.append(nn.Sequential(*layers))
        self.downs = nn.ModuleList(downs)
        ups: list[nn.Module] = []
        for j, i in enumerate(range(depth - 1, 0, -1)):  # decoder level i maps ch[i] (+ skip) -> ch[i - 1]
            c_in = ch[i] if i == depth - 1 else 2 * ch[i]
            layers = [nn.ReLU(), nn.ConvTranspose2d(c_in, ch[i - 1], 4, 2, 1, bias=False), _norm(norm, ch[i - 1])]
            if dropout > 0 and j < 3:  # the paper's noise: dropout in the three innermost decoder blocks
                layers.append(nn.Dropout(dropout))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)
        self.last = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * ch[0], out_channels, 4, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = _pad_to(x, self.multiple)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        y = skips.pop()
        for up in self.ups:
            y = torch.cat([up(y), skips.pop()], dim=1)
        return self.last(y)[..., :h, :w]


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            _norm(norm, channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator: c7s1-64, two stride-2 downs, ``blocks`` residual blocks, two ups, c7s1-out.

    No skips from input to output, so it can change shape (a sneaker into a boot), which a U-Net resists.
    Sides must be multiples of 4; other sizes are reflect-padded and cropped back.
    """

    multiple = 4

    def __init__(
        self, in_channels: int, out_channels: int, base: int = 64, blocks: int = 6, norm: str = "instance"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, base, 7, bias=False),
            _norm(norm, base),
            nn.ReLU(),
        ]
        c = base
        for _ in range(2):
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=False), _norm(norm, 2 * c), nn.ReLU()]
            c *= 2
        layers += [ResnetBlock(c, norm) for _ in range(blocks)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=False),
                _norm(norm, c // 2),
                nn.ReLU(),
            ]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = _pad_to(x, self.multiple)
        return self.net(x)[..., :h, :w]


class ResidualGenerator(nn.Module):
    """A generator that edits its input: ``out = clamp(x + 2 * r(x), -1, 1)``, ``r`` starting at exactly zero.

    Why: at 28 px a CycleGAN generator that repaints every pixel spends its first thousands of steps rebuilding
    what should not change (the black background, the sole, the outline) and leaves blotchy texture there,
    which is worse, by FID, than not translating at all (the quick profile: 173.5 against 127.0). Here training
    starts at the identity (the last layer is zero-initialised, as in ReZero / Fixup) and the network only
    learns what differs between the domains (a boot's shaft). A multiplicative mask (``m * paint + (1 - m) *
    x``, attention-guided CycleGANs) was tried first and collapsed: the cycle loss drives ``m`` to 0 before
    ``paint`` learns anything, the tanh saturates, and the model stays the identity (cycle L1 0.003 at step
    150); an additive residual has no such gate. ``r`` is the inner network's tanh output, so one step of
    ``2 * r`` spans black to white.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.multiple = int(getattr(net, "multiple", 1))
        last = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)][-1]
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 2 * self.net(x)).clamp(-1, 1)


class PatchDiscriminator(nn.Module):
    """PatchGAN: a map of real/fake logits, one per overlapping patch (70x70 with 3 layers, as in pix2pix).

    Judging patches instead of the whole image models high frequencies (L1 already handles the low ones) with
    fewer parameters, and works at any image size. pix2pix feeds it the input and output concatenated, so it
    judges whether the output fits the input; CycleGAN feeds it one image.
    """

    def __init__(
        self, in_channels: int, base: int = 64, layers: int = 3, cap: int = 512, norm: str = "instance"
    ) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = base
        for i in range(1, layers + 1):
            c_out = min(base * 2**i, cap)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), _norm(norm, c_out), nn.LeakyReLU(0.2)]
            c = c_out
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImagePool(nn.Module):
    """CycleGAN's history of generated images (Shrivastava et al.): the discriminator sees old fakes too.

    The images are buffers, so the engine checkpoints them with the modules and a resumed run draws from the
    same history; the random choices come from the generator passed in (the engine's).
    """

    def __init__(self, size: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("images", torch.zeros(size, *shape))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def query(self, fakes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per image: while the pool fills, store and return it; then with p=0.5 swap it for a stored one."""
        if self.size == 0:
            return fakes
        out = fakes.detach().clone()
        n = len(fakes)
        coin = torch.rand(n, generator=generator, device=fakes.device).tolist()
        slot = torch.randint(0, self.size, (n,), generator=generator, device=fakes.device).tolist()
        for i in range(n):
            filled = int(self.filled)
            if filled < self.size:
                self.images[filled].copy_(fakes[i])
                self.filled.add_(1)
            elif coin[i] > 0.5:
                out[i] = self.images[slot[i]].clone()
                self.images[slot[i]].copy_(fakes[i])
        return out


def gan_loss(logits: torch.Tensor, real: bool, kind: str) -> torch.Tensor:
    """``vanilla``: binary cross-entropy on logits (pix2pix); ``lsgan``: least squares (CycleGAN)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def build_generator(kind: str, channels: int, resolution: int, t: dict[str, Any], residual: bool = False) -> nn.Module:
    """A generator from the ``translate`` section of a model config (shared by training and loading).

    ``residual``: wrap it in a :class:`ResidualGenerator` (CycleGAN's ``translate.cyclegan_residual``)."""
    out = channels
    net: nn.Module
    if kind == "resnet":
        net = ResnetGenerator(channels, out, t["g_channels"], t["resnet_blocks"], t["norm"])
    else:
        depth = t["unet_depth"] or unet_depth(resolution)
        net = UNetGenerator(channels, out, depth, t["g_channels"], t["max_channels"], t["norm"], t["dropout"])
    return ResidualGenerator(net) if residual else net


class TranslatePredictor:
    """The :class:`~productgen.models.predict.Predictor` of a pix2pix or CycleGAN model folder.

    pix2pix maps source-view images (a sketch, or a blurred photo for a blur model) to products; CycleGAN maps
    domain A to B, or B to A with ``direction="ba"``.
    """

    scale = 1

    def __init__(self, generators: dict[str, nn.Module], config: dict[str, Any], device: torch.device) -> None:
        self.generators, self.config, self.device = generators, config, device
        self.channels = int(config["channels"])
        self.multiple = max(int(getattr(g, "multiple", 1)) for g in generators.values())

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, direction: str = "ab", **options: Any) -> torch.Tensor:
        if options:
            raise UserError(f"unknown option(s) {', '.join(sorted(options))} for a {self.config['model']} model")
        if direction not in self.generators:
            ways = " or ".join(repr(k) for k in self.generators)
            raise UserError(
                f"--direction: {direction!r} is not available for this {self.config['model']} model (use {ways})"
            )
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected uint8 [N, {self.channels}, H, W], got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.device).float().div(127.5).sub(1.0)
        y = self.generators[direction](x)
        return y.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def load_predictor(folder: Path, device: str | torch.device = "cpu") -> TranslatePredictor:
    """The predictor of a ``pix2pix`` or ``cyclegan`` model folder (the EMA A->B generator; raw B->A)."""
    from productgen.models.io import load_weights, read_model_config

    cfg, spec = read_model_config(folder, f"{__name__}:load_predictor", "a pix2pix or cyclegan translation model")
    kind = spec.name
    try:
        t, res, ch = cfg["translate"], int(cfg["resolution"]), int(cfg["channels"])
        # paired (pix2pix): one U-Net; unpaired (CycleGAN): the configured generator, both ways
        arch = "unet" if spec.paired else t["cyclegan_generator"]
        files = {"ab": "generator", "ba": "generator_ba"} if spec.reversible else {"ab": "generator"}
        residual = not spec.paired and bool(t.get("cyclegan_residual", False))  # older models: not residual
        nets = {d: build_generator(arch, ch, res, t, residual) for d in files}
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{folder}/config.json: incomplete {kind} config ({err!r}); retrain or re-export it") from None
    dev = torch.device(device)
    for d, name in files.items():
        load_weights(nets[d], folder / f"{name}.safetensors")
        nets[d] = nets[d].to(dev).eval()
    return TranslatePredictor(nets, cfg, dev)
