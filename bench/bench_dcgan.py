"""GAN training images/s at 64 px: the pytorch/examples DCGAN recipe against our engine, measured in one run.

Baseline (``examples``): a faithful re-implementation of pytorch/examples ``dcgan/main.py`` (nz 100, ngf = ndf =
64, nc 3, 64 px, BCE on a sigmoid, Adam 2e-4 betas (0.5, 0.999), ``weights_init``, fp32 eager NCHW, two D
backward passes and one G forward per iteration, the ``.item()`` calls and the per-iteration log line) fed by a
``torchvision.datasets.ImageFolder`` of PNG files decoded by PIL (Resize, CenterCrop, ToTensor, Normalize) through
a ``DataLoader`` with N workers (examples' default 2; 8 as in the anchor's 7,775 img/s on an H100). Only the
examples' ``save_image`` every 100 iterations is left out (it would slow the baseline down).

Ours, same batch, through :func:`productgen.training.engine.fit` (the real loop: uint8 images resident on the GPU,
bf16 autocast, channels_last, fused Adam, the engine's logging and divergence checks; optionally torch.compile):

- ``dcgan-engine`` / ``dcgan-engine-compile`` / ``dcgan-engine-compile-nchw``: the same DCGAN networks and losses
  as the baseline (same architecture and batch: the engine's own gain);
- ``gan-engine`` / ``gan-engine-compile``: our class-conditional GAN (``GanConfig`` defaults at 64 px: SN
  discriminator, projection, conditional BN, hinge, DiffAugment, EMA), about 2.4x the DCGAN's FLOPs per image.

The PNG folder is written first (into a temp dir) from the prepared dataset's train split (Fashion-MNIST 28 px,
upscaled to 64 px, RGB) or from synthetic images (``--source synthetic``, smooth random blobs), and every recipe
trains on the same images. Each recipe runs in its own subprocess with a time limit (a compile that fails or
hangs costs one line, not the run); timing starts after ``--warmup`` steps and excludes checkpoints. One JSON
line per recipe, then a summary line with every ratio against the 8-worker (first ``--workers``) baseline.

    PYTHONPATH=src python bench/bench_dcgan.py --device cuda --workers 8 2 --images 60000 --steps 300
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_dcgan.py --device cpu --tiny      # CPU rehearsal

Needs torch, torchvision, pillow, numpy (no MLOps stack): it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

NZ, NGF, NDF = 100, 64, 64
ENGINE_RECIPES = (
    "dcgan-engine",
    "dcgan-engine-compile",
    "dcgan-engine-compile-nchw",
    "gan-engine",
    "gan-engine-compile",
)
# compile with channels_last failed for this DCGAN in one PyTorch build (ANCHORS.md): NCHW only when asked
DEFAULT_RECIPES = ("dcgan-engine", "dcgan-engine-compile", "gan-engine", "gan-engine-compile")


# ---- pytorch/examples dcgan/main.py, re-implemented ----------------------------------------------------------
def weights_init(m: nn.Module) -> None:
    """examples' custom init: conv weights N(0, 0.02); batch-norm weights N(1, 0.02), biases 0."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    def __init__(self, nc: int = 3, nz: int = NZ, ngf: int = NGF) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    def __init__(self, nc: int = 3, ndf: int = NDF) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1, 1).squeeze(1)


def examples_loader(root: Path, batch_size: int, workers: int, image_size: int = 64) -> Any:
    """examples' ``--dataset folder`` data path: ImageFolder + PIL transforms + a shuffling DataLoader."""
    import torchvision.datasets as dset
    import torchvision.transforms as transforms

    dataset = dset.ImageFolder(
        root=str(root),
        transform=transforms.Compose(
            [
                transforms.Resize(image_size),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        ),
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def run_examples(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    """examples' training loop; images/s over ``args.steps`` iterations after ``args.warmup``."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # examples: cudnn.benchmark = True
    torch.manual_seed(999)
    netG, netD = DCGANGenerator().to(device), DCGANDiscriminator().to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    real_label, fake_label = 1.0, 0.0
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    dataloader = examples_loader(args.png_dir, args.batch_size, workers)
    log = io.StringIO()  # the examples print one line per iteration; formatting it is part of the recipe
    total = args.warmup + args.steps
    i, t0, epoch = 0, None, 0
    while i < total:
        for data in dataloader:
            if i == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            if i >= total:
                break
            netD.zero_grad()
            real_cpu = data[0].to(device)
            batch_size = real_cpu.size(0)
            label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype, device=device)
            output = netD(real_cpu)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.mean().item()
            noise = torch.randn(batch_size, NZ, 1, 1, device=device)
            fake = netG(noise)
            label.fill_(fake_label)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.mean().item()
            errD = errD_real + errD_fake
            optimizerD.step()
            netG.zero_grad()
            label.fill_(real_label)
            output = netD(fake)
            errG = criterion(output, label)
            errG.backward()
            D_G_z2 = output.mean().item()
            optimizerG.step()
            log.write(
                f"[{epoch}/25][{i}/{len(dataloader)}] Loss_D: {errD.item():.4f} Loss_G: {errG.item():.4f} "
                f"D(x): {D_x:.4f} D(G(z)): {D_G_z1:.4f} / {D_G_z2:.4f}\n"
            )
            if log.tell() > 1 << 20:
                log = io.StringIO()
            i += 1
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert t0 is not None
    dt = time.perf_counter() - t0
    return {"img_s": args.steps * args.batch_size / dt, "seconds": dt}


# ---- the same networks (and our GAN) inside the productgen engine ---------------------------------------------
class DcganTask:
    """The examples' DCGAN as an engine task: same networks, init, losses and optimizer settings; the engine adds
    GPU-resident uint8 data, autocast, channels_last, fused Adam and (optionally) torch.compile. The D loss sums the
    real and fake BCE terms for one backward pass (the examples' two backward passes accumulate the same gradient);
    BCE runs in fp32 outside autocast (``binary_cross_entropy`` refuses autocast)."""

    name = "dcgan"
    ema_module = None

    def __init__(self, engine: Any, channels: int) -> None:
        torch.manual_seed(999)
        g, d = DCGANGenerator(channels), DCGANDiscriminator(channels)
        g.apply(weights_init)
        d.apply(weights_init)
        self.modules = {"G": engine.prepare_module(g), "D": engine.prepare_module(d)}
        self.optimizers = {k: engine.adam(m.parameters(), 2e-4, (0.5, 0.999)) for k, m in self.modules.items()}

    def config(self) -> dict[str, Any]:
        return {"model": "dcgan-bench"}

    def train_step(self, engine: Any, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        G, D = engine.fast("G", self.modules["G"]), engine.fast("D", self.modules["D"])
        bce = nn.functional.binary_cross_entropy
        real = engine.to_input(images)
        n = len(real)
        noise = torch.randn(n, NZ, 1, 1, generator=engine.generator, device=engine.rt.device)
        ones = torch.ones(n, device=engine.rt.device)
        zeros = torch.zeros(n, device=engine.rt.device)
        with engine.autocast():
            fake = G(noise)
            out_real = D(real)
            out_fake = D(fake.detach())
        loss_d = bce(out_real.float(), ones) + bce(out_fake.float(), zeros)
        engine.optimize(self.optimizers["D"], loss_d)
        with engine.autocast():
            out_g = D(fake)
        loss_g = bce(out_g.float(), ones)
        engine.optimize(self.optimizers["G"], loss_g)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    def sample_grid(self, engine: Any, generator: torch.Generator) -> np.ndarray:
        with torch.no_grad():
            z = torch.randn(16, NZ, 1, 1, generator=generator, device=engine.rt.device)
            x = self.modules["G"](z)
        return x.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def run_engine(args: argparse.Namespace, recipe: str) -> dict[str, Any]:
    """``recipe`` through engine.fit; images/s between the end of step ``warmup`` and the end of step
    ``warmup + steps`` (one more step follows, so the final sample grid and checkpoint are outside)."""
    import dataclasses

    from productgen.config import GanConfig, TrainConfig
    from productgen.training.device import init_runtime
    from productgen.training.engine import Engine, fit
    from productgen.training.gan_task import GanTask

    x = torch.from_numpy(np.load(args.png_dir / "images.npy"))
    y = torch.from_numpy(np.load(args.png_dir / "labels.npy"))
    compiled = "compile" in recipe
    total = args.warmup + args.steps + 1
    cfg = TrainConfig(
        batch_size=args.batch_size,
        max_steps=total,
        device=args.device,
        precision="auto",
        channels_last=not recipe.endswith("nchw"),
        compile=compiled,
        fused_optimizer=True,
        data_on_device=True,
        log_every=50,
        sample_every=10**9,
        checkpoint_every=10**9,
    )
    rt = init_runtime(cfg.device, cfg.precision)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{recipe}-", dir=args.work))
    engine = Engine(cfg, rt, out)
    if recipe.startswith("dcgan"):
        task: Any = DcganTask(engine, x.shape[1])
    else:
        classes = [f"c{i}" for i in range(int(y.max()) + 1)]
        task = GanTask(dataclasses.replace(GanConfig(), **args.gan), engine, x.shape[-1], x.shape[1], classes)
    marks: dict[int, float] = {}

    def on_step(done: int, eng: Any, t: Any) -> None:
        if done in (args.warmup, args.warmup + args.steps):
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            marks[done] = time.perf_counter()

    t_start = time.perf_counter()
    fit(task, engine, x, y, show_progress=False, on_step=on_step)
    dt = marks[args.warmup + args.steps] - marks[args.warmup]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "img_s": args.steps * args.batch_size / dt,
        "seconds": dt,
        "warmup_s": marks[args.warmup] - t_start,
        "precision": str(rt.dtype).replace("torch.", "") if rt.dtype else "fp32",
        "channels_last": cfg.channels_last,
        "compile": compiled,
    }


# ---- the PNG folder --------------------------------------------------------------------------------------------
def source_images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 [N, 3, 64, 64] RGB images and labels: the prepared train split upscaled, or synthetic blobs."""
    from PIL import Image

    n = args.images
    if args.source in ("prepared", "auto") and (Path(args.prepared) / "dataset.json").is_file():
        from productgen.data.dataset import PreparedDataset

        ds = PreparedDataset(args.prepared)
        xs, ys = ds.tensors("train")
        reps = math.ceil(n / len(xs))
        xs, ys = xs.repeat(reps, 1, 1, 1)[:n].numpy(), ys.repeat(reps)[:n].numpy()
        out = np.empty((n, 3, args.resolution, args.resolution), np.uint8)
        for i, img in enumerate(xs):
            im = Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0))
            im = im.convert("RGB").resize((args.resolution, args.resolution), Image.BILINEAR)
            out[i] = np.asarray(im).transpose(2, 0, 1)
        return out, ys.astype(np.int64), f"prepared:{args.prepared}"
    if args.source == "prepared":
        raise SystemExit(f"--source prepared: no prepared dataset in {args.prepared}")
    g = torch.Generator().manual_seed(0)
    out = np.empty((n, 3, args.resolution, args.resolution), np.uint8)
    for i in range(
        0, n, 4096
    ):  # smooth random blobs (PNG sizes like real product shots), in chunks: no 3 GB float copy
        low = torch.rand(min(4096, n - i), 3, 6, 6, generator=g) * 255
        x = torch.nn.functional.interpolate(low, size=(args.resolution,) * 2, mode="bicubic", align_corners=False)
        out[i : i + len(x)] = x.clamp(0, 255).to(torch.uint8).numpy()
    return out, torch.randint(0, 10, (n,), generator=g).numpy(), "synthetic"


def _write_pngs(job: tuple[str, np.ndarray, np.ndarray, int]) -> int:
    from PIL import Image

    root, imgs, labels, start = job
    for k, (img, lab) in enumerate(zip(imgs, labels)):
        Image.fromarray(img.transpose(1, 2, 0)).save(Path(root) / f"c{lab}" / f"{start + k:06d}.png")
    return len(imgs)


def write_folder(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Write the ImageFolder (root/c<label>/<index>.png) and the same images as .npy for the engine recipes."""
    from multiprocessing import Pool

    t = time.perf_counter()
    x, y, src = source_images(args)
    for lab in np.unique(y):
        (root / f"c{lab}").mkdir(parents=True, exist_ok=True)
    chunk = max(1, math.ceil(len(x) / (os.cpu_count() or 1) / 4))
    jobs = [(str(root), x[i : i + chunk], y[i : i + chunk], i) for i in range(0, len(x), chunk)]
    with Pool(min(len(jobs), os.cpu_count() or 1)) as pool:
        written = sum(pool.map(_write_pngs, jobs))
    np.save(root / "images.npy", x)
    np.save(root / "labels.npy", y)
    size = sum(p.stat().st_size for p in root.glob("c*/*.png"))
    return {"images": written, "source": src, "png_bytes": size, "seconds": round(time.perf_counter() - t, 1)}


# ---- driver -------------------------------------------------------------------------------------------------------
def _child(args: argparse.Namespace) -> int:
    try:
        if args.only.startswith("examples-w"):
            res = run_examples(args, int(args.only.removeprefix("examples-w")))
        else:
            res = run_engine(args, args.only)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    except Exception as err:  # noqa: BLE001 - one recipe failing (a compile error) must not hide the others
        print(f"ERROR {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:400], flush=True)
        return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (CUDA when there), cuda, cpu")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300, help="timed training steps per recipe")
    ap.add_argument("--warmup", type=int, default=30, help="untimed steps first (cudnn autotune, compile)")
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 2], help="DataLoader workers of the baseline(s)")
    ap.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), choices=ENGINE_RECIPES)
    ap.add_argument("--images", type=int, default=60000, help="PNG files to write (Fashion-MNIST has 60,000)")
    ap.add_argument("--source", choices=["auto", "prepared", "synthetic"], default="auto")
    ap.add_argument("--prepared", default="artifacts/prepared")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per recipe (compiles included)")
    ap.add_argument("--json", type=Path, default=None, help="also write every result here (JSON)")
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal: 200 images, batch 16, 6 steps, 2 warm-up")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--png-dir", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--gan-json", default="{}", help="GanConfig overrides for the gan-engine recipes (JSON)")
    args = ap.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.gan = json.loads(args.gan_json)
    if args.tiny:
        args.images, args.batch_size, args.steps, args.warmup = min(args.images, 200), 16, 6, 2
        args.workers = args.workers[:1] if args.workers != [8, 2] else [1]
    if args.only:
        return _child(args)

    work = Path(tempfile.mkdtemp(prefix="bench-dcgan-"))
    png = work / "png"
    try:
        folder = write_folder(args, png)
        dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(json.dumps({"bench": "dcgan-data", **folder}), flush=True)
        results: dict[str, dict[str, Any]] = {}
        # the first baseline, then ours, then the other baselines: a cut-off run keeps the ratios that matter
        recipes = [f"examples-w{args.workers[0]}", *args.recipes, *[f"examples-w{w}" for w in args.workers[1:]]]
        passthrough = [
            "--device",
            args.device,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--png-dir",
            str(png),
            "--work",
            str(work),
            "--gan-json",
            args.gan_json,
            "--resolution",
            str(args.resolution),
        ]
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
        )
        while recipes:
            recipe = recipes.pop(0)
            t = time.perf_counter()
            try:
                p = subprocess.run(
                    [sys.executable, __file__, "--only", recipe, *passthrough],
                    env=env,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                )
                lines = p.stdout.splitlines()
                res = next((json.loads(ln[7:]) for ln in lines if ln.startswith("RESULT ")), None)
                if res is None:
                    why = next((ln for ln in lines if ln.startswith("ERROR ")), None)
                    why = why or (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
                    res = {"error": why[:400]}
            except subprocess.TimeoutExpired:
                res = {"error": f"timed out after {args.timeout:.0f} s"}
            res["wall_s"] = round(time.perf_counter() - t, 1)
            results[recipe] = res
            if "error" in res and f"{recipe}-nchw" in ENGINE_RECIPES and f"{recipe}-nchw" not in results:
                recipes.insert(0, f"{recipe}-nchw")  # compile + channels_last failed once (ANCHORS.md): try NCHW
            print(
                json.dumps(
                    {
                        "bench": "dcgan",
                        "recipe": recipe,
                        "batch_size": args.batch_size,
                        **{k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()},
                    }
                ),
                flush=True,
            )
            if args.json:  # after every recipe, so a run stopped from outside keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"data": folder, "results": results}, indent=2))
        base_name = f"examples-w{args.workers[0]}"
        base = results.get(base_name, {}).get("img_s")
        ratios = {r: round(v["img_s"] / base, 2) for r, v in results.items() if base and "img_s" in v}
        summary = {
            "bench": "dcgan-summary",
            "device": dev,
            "torch": torch.__version__,
            "resolution": args.resolution,
            "batch_size": args.batch_size,
            "baseline": base_name,
            "img_s": {r: round(v["img_s"], 1) for r, v in results.items() if "img_s" in v},
            "ratio_vs_baseline": ratios,
            "target_ratio": 3.0,
            "failed": {r: v["error"] for r, v in results.items() if "error" in v},
        }
        print(json.dumps(summary), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"data": folder, "results": results, "summary": summary}, indent=2))
        return 0 if base else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
