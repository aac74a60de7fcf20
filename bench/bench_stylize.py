"""Inference speed of style transfer: our per-style network and AdaIN model vs the pytorch/examples baseline.

    PYTHONPATH=src python bench/bench_stylize.py --device cuda --sizes 256 512 --batch 32 --compile
    PYTHONPATH=src python bench/bench_stylize.py --device cpu --sizes 256 512 --batch 2 --iters 2

Measured in one run, on random weights (speed does not depend on training) and random inputs already on the
device:

(a) baseline: a re-implementation of pytorch/examples ``fast_neural_style`` TransformerNet inference as its
    ``stylize`` runs it: fp32, eager, NCHW, ``torch.no_grad``;
(b) ours: :class:`productgen.models.style.TransformerNet` with our inference recipe: ``inference_mode``,
    channels_last, bf16 autocast on CUDA (fp16 where bf16 is missing), optional ``torch.compile``;
(c) ours, AdaIN: encoder + AdaIN + decoder (:mod:`productgen.models.adain`) with the same recipe, the style
    image encoded once per batch (as the predictor does).

Reported: single-image latency (batch 1, median ms) and batched throughput (images/s at ``--batch``), with
ratios ours / baseline. Only torch and productgen core are imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# ---- (a) baseline: pytorch/examples fast_neural_style/neural_style/transformer_net.py ---------------------------


class ConvLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        return out + residual


class UpsampleConvLayer(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, upsample: int | None = None
    ) -> None:
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = nn.functional.interpolate(x, mode="nearest", scale_factor=self.upsample)
        return self.conv2d(self.reflection_pad(x))


class BaselineTransformerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvLayer(3, 32, kernel_size=9, stride=1)
        self.in1 = nn.InstanceNorm2d(32, affine=True)
        self.conv2 = ConvLayer(32, 64, kernel_size=3, stride=2)
        self.in2 = nn.InstanceNorm2d(64, affine=True)
        self.conv3 = ConvLayer(64, 128, kernel_size=3, stride=2)
        self.in3 = nn.InstanceNorm2d(128, affine=True)
        self.res1, self.res2, self.res3, self.res4, self.res5 = (ResidualBlock(128) for _ in range(5))
        self.deconv1 = UpsampleConvLayer(128, 64, kernel_size=3, stride=1, upsample=2)
        self.in4 = nn.InstanceNorm2d(64, affine=True)
        self.deconv2 = UpsampleConvLayer(64, 32, kernel_size=3, stride=1, upsample=2)
        self.in5 = nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, kernel_size=9, stride=1)
        self.relu = nn.ReLU()

    def forward(self, X: torch.Tensor) -> torch.Tensor:  # noqa: N803 - as in pytorch/examples
        y = self.relu(self.in1(self.conv1(X)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


# ---- timing ---------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of one call (after ``warmup`` calls, which also absorb compilation)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def runners(
    device: torch.device, compile_mode: str | None, channels: int, blocks: int
) -> dict[str, Callable[[torch.Tensor], Any]]:
    """name -> function of a float [0, 1] NCHW batch on ``device``."""
    from productgen.models.adain import Decoder, stylise
    from productgen.models.encoders import build_encoder
    from productgen.models.style import TransformerNet, inference_recipe

    torch.manual_seed(0)
    base = BaselineTransformerNet().to(device).eval()

    def run_base(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return base(x * 255.0).clamp(0, 255)  # the example feeds 0-255 and clamps when saving

    ours, dtype = inference_recipe(TransformerNet(channels, blocks).to(device).eval(), device)
    enc, _ = inference_recipe(build_encoder("efficientnet-lite0").to(device), device)  # weights do not change speed
    level = 2
    dec, _ = inference_recipe(Decoder(enc.channels[level], enc.strides[level], 32).to(device).eval(), device)
    if compile_mode:
        ours = torch.compile(ours, mode=compile_mode, dynamic=False)  # type: ignore[assignment]
        enc = torch.compile(enc, mode=compile_mode, dynamic=False)  # type: ignore[assignment]
        dec = torch.compile(dec, mode=compile_mode, dynamic=False)  # type: ignore[assignment]
    cl = device.type == "cuda"
    style = torch.rand(1, 3, 256, 256, device=device)

    def prep(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    def run_ours(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            return ours(prep(x))

    def run_adain(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            fs = enc(prep(style), upto=level)[level]
            return stylise(enc, dec, prep(x), fs, level)[0]

    return {"baseline (pytorch/examples, fp32 eager)": run_base, "ours: per-style": run_ours, "ours: AdaIN": run_adain}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=None, help="throughput batch (default 32 on CUDA, 2 on CPU)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per measurement (default 20 CUDA, 2 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 5 CUDA, 1 CPU)")
    ap.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        help="torch.compile our networks (optional mode, e.g. reduce-overhead)",
    )
    ap.add_argument("--channels", type=int, default=32, help="our TransformerNet width (baseline: 32)")
    ap.add_argument("--residual-blocks", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (32 if gpu else 2)
    iters = args.iters or (20 if gpu else 2)
    warmup = args.warmup or (5 if gpu else 1)
    if gpu:
        torch.backends.cudnn.benchmark = True
    fns = runners(device, args.compile, args.channels, args.residual_blocks)
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {name}; torch {torch.__version__}; batch {batch}; {iters} timed calls after {warmup} warm-up"
        f"{'; torch.compile ' + args.compile if args.compile else ''}"
    )
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        x1 = torch.rand(1, 3, size, size, device=device)
        xb = torch.rand(batch, 3, size, size, device=device)
        for label, fn in fns.items():
            lat = timed(lambda: fn(x1), device, warmup, iters)  # noqa: B023
            thr = timed(lambda: fn(xb), device, warmup, iters)  # noqa: B023
            rows.append({"size": size, "model": label, "latency_ms": lat * 1e3, "images_per_s": batch / thr})
    base = {r["size"]: r for r in rows if r["model"].startswith("baseline")}
    print(f"\n{'px':>5}  {'model':<40} {'latency ms':>11} {'img/s':>10} {'lat. ratio':>11} {'thr. ratio':>11}")
    for r in rows:
        b = base[r["size"]]
        r["latency_ratio"] = r["latency_ms"] / b["latency_ms"]  # ours / baseline: < 1 is faster
        r["throughput_ratio"] = r["images_per_s"] / b["images_per_s"]  # ours / baseline: > 1 is faster
        print(
            f"{r['size']:>5}  {r['model']:<40} {r['latency_ms']:>11.2f} {r['images_per_s']:>10.2f} "
            f"{r['latency_ratio']:>11.2f} {r['throughput_ratio']:>11.2f}"
        )
    print("\nratios are ours / baseline from this run (latency: < 1 is faster; throughput: > 1 is faster)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"device": name, "batch": batch, "compile": args.compile, "rows": rows}, indent=2)
        )
    return rows


if __name__ == "__main__":
    main()
