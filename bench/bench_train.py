"""Training throughput of the engine against the plain PyTorch recipe, measured in the same run.

Baseline (pytorch/examples style): fp32 eager, NCHW, a DataLoader over the dataset on the CPU, foreach Adam.
Engine: the productgen recipe: uint8 dataset resident on the device, bf16 autocast (CUDA, and CPUs with native
bf16: AVX512-BF16 / AMX), channels_last (CUDA and CPU), fused Adam (CUDA), optionally torch.compile. Same
networks, batch and steps; prints images/s and the ratio.

On the 2-core AMD EPYC (avx512_bf16) at 28 px, batch 64, the default GAN: baseline 49.7 img/s, engine 90.0,
ratio 1.81 (``--synthetic 2000 --resolution 28 --batch-size 64 --steps 30 --workers 0 --device cpu``).

    PYTHONPATH=src python bench/bench_train.py --prepared artifacts/prepared --steps 200 --batch-size 128
    PYTHONPATH=src python bench/bench_train.py --resolution 64 --synthetic 60000 --batch-size 1024 --compile
    PYTHONPATH=src python bench/bench_train.py --synthetic 2000 --resolution 28 --batch-size 64 --workers 0 \
        --device cpu --width 32 --against eager        # the CPU recipe's step, eager vs torch.compile

Runs with the core dependencies only (torch, numpy, pillow, safetensors), so it works on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from productgen.config import GanConfig, TrainConfig
from productgen.training.device import Runtime, init_runtime
from productgen.training.engine import Engine
from productgen.training.gan_task import GanTask


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(
            0, 256, (args.synthetic, args.channels, args.resolution, args.resolution), generator=g, dtype=torch.uint8
        )
        return x, torch.randint(0, 10, (args.synthetic,), generator=g), [f"c{i}" for i in range(10)]
    from productgen.data.dataset import PreparedDataset

    ds = PreparedDataset(args.prepared)
    x, y = ds.tensors("train")
    return x, y, ds.classes


def run(recipe: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> float:
    """images/s of one recipe: "baseline" (plain PyTorch), "engine" (eager) or "compiled" (the engine compiled)."""
    fast = recipe != "baseline"
    cfg = TrainConfig(
        batch_size=args.batch_size,
        max_steps=args.steps,
        device=args.device,
        precision=args.precision if fast else "fp32",
        channels_last=fast,
        fused_optimizer=fast,
        compile=recipe == "compiled",
        data_on_device=fast,
    )
    rt0 = init_runtime(cfg.device, cfg.precision)
    rt = Runtime(device=rt0.device, dtype=rt0.dtype)
    engine = Engine(cfg, rt, Path("/tmp/bench-unused"))
    gan = dataclasses.replace(GanConfig(), diffaugment=args.diffaugment)
    if args.width:
        gan = dataclasses.replace(gan, g_channels=args.width, d_channels=args.width)
    task = GanTask(gan, engine, x.shape[-1], x.shape[1], classes)
    if fast:
        xs, ys = x.to(rt.device), y.to(rt.device)

        def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(0, len(xs), (cfg.batch_size,), device=rt.device)
            return xs[idx], ys[idx]
    else:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y),
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
        )
        it = iter(loader)

        def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal it
            try:
                return next(it)
            except StopIteration:
                it = iter(loader)
                return next(it)

    def sync() -> None:
        if rt.device.type == "cuda":
            torch.cuda.synchronize()

    for step in range(args.warmup):
        task.train_step(engine, *batches(step))
    sync()
    t = time.perf_counter()
    for step in range(args.steps):
        task.train_step(engine, *batches(step))
    sync()
    return args.steps * cfg.batch_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", default="artifacts/prepared")
    ap.add_argument("--synthetic", type=int, default=0, help="use N random images instead of a prepared dataset")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--diffaugment", default="translation,cutout")
    ap.add_argument("--width", type=int, default=0, help="generator and discriminator width (0: GanConfig's, 64)")
    ap.add_argument("--precision", default="auto", help="the engine's: auto | fp32 | bf16 | fp16")
    ap.add_argument(
        "--against",
        choices=["baseline", "eager"],
        default="baseline",
        help="baseline: plain PyTorch vs the engine; eager: the engine vs the engine compiled (implies --compile)",
    )
    args = ap.parse_args()
    x, y, classes = load_data(args)
    if args.against == "eager":
        base = run("engine", args, x, y, classes)
        ours = run("compiled", args, x, y, classes)
    else:
        base = run("baseline", args, x, y, classes)
        ours = run("compiled" if args.compile else "engine", args, x, y, classes)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        json.dumps(
            {
                "device": device,
                "torch": torch.__version__,
                "resolution": x.shape[-1],
                "batch_size": args.batch_size,
                "against": args.against,
                "baseline_img_s": round(base, 1),
                "engine_img_s": round(ours, 1),
                "ratio": round(ours / base, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
