"""Training images/s of the U-Net restorer on one GPU: the way it ran before against larger batches, torch.compile
and CUDA graphs, measured in one run.

Why: on an H200 (2026-11-30) the 28 px restorer trained at only about 3,000 images/s per process (four runs
sharing the GPU, batch 256, ``gpu-denoise-noise25``: width 64, 2 levels, 2 blocks, GroupNorm), which points at
launch overhead, not arithmetic: at 28 px a step of ~60 small kernels per network pass takes microseconds of GPU
time each, so the CPU issuing them is the limit. Two per-step host syncs were removed since (docs/layout.md); what
is left is one kernel launch per op. If the step is launch-bound, its time barely grows with the batch (batch 1024
costs far less than 4x batch 256) and fusing kernels (torch.compile) or replaying the whole forward/backward as one
CUDA graph (compile mode ``reduce-overhead``) raises images/s; GroupNorm in channels_last is a known slow path, so
NCHW is measured too.

Every variant trains the real :class:`~productgen.training.restore_task.RestoreTask` (noise25, fresh noise every
step, L2 loss, cosine schedule, EMA) through :func:`productgen.training.engine.fit` in its own subprocess with a
time limit; images/s between the end of step ``--warmup`` and the end of step ``--warmup + --steps``.

    PYTHONPATH=src python bench/bench_restore.py --device cuda
    PYTHONPATH=src python bench/bench_restore.py --device cuda --variants b256-eager b1024-compile
    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_restore.py --device cpu --tiny     # CPU rehearsal

Variants: ``b<batch>-<eager|compile|cudagraphs>[-nchw]``. Needs only the productgen core.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

DEFAULT_VARIANTS = ["b256-eager", "b256-eager-nchw", "b1024-eager", "b1024-compile", "b256-cudagraphs"]
VARIANT = re.compile(r"^b(\d+)-(eager|compile|cudagraphs)(-nchw)?$")


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    from productgen.config import load_params
    from productgen.tasks import DatasetInfo
    from productgen.training import restore_task
    from productgen.training.device import init_runtime
    from productgen.training.engine import Engine, fit

    m = VARIANT.match(variant)
    assert m is not None
    batch, mode, nchw = int(m.group(1)), m.group(2), bool(m.group(3))
    if args.tiny:
        batch = max(2, batch // 64)
    p = load_params("params.yaml" if Path("params.yaml").is_file() else None, profile=args.profile)
    total = args.warmup + args.steps + 1
    cfg = dataclasses.replace(
        p.train,
        batch_size=batch,
        max_steps=total,
        device=args.device,
        channels_last=not nchw,
        compile=mode == "compile",
        log_every=50,
        sample_every=10**9,
        checkpoint_every=10**9,
    )
    rcfg = dataclasses.replace(p.restore, decay_steps=total)
    prepared = Path(p.train.prepared or p.data.out)
    if (prepared / "dataset.json").is_file() and args.source != "synthetic":
        from productgen.data.dataset import PreparedDataset

        ds = PreparedDataset(prepared)
        x, y = ds.tensors("train")
        info = DatasetInfo(ds.resolution, ds.channels, list(ds.classes), str(ds.root), ds.content_hash)
        source = "prepared"
    else:  # smooth random 28 px images; the sample-grid preview comes from them too (no dataset on disk)
        g = torch.Generator().manual_seed(0)
        low = torch.rand(args.images, 1, 5, 5, generator=g) * 255
        x = torch.nn.functional.interpolate(low, size=(28, 28), mode="bicubic").clamp(0, 255).to(torch.uint8)
        y = torch.randint(0, 10, (args.images,), generator=g)
        info = DatasetInfo(28, 1, [f"c{i}" for i in range(10)], "", "synthetic")
        restore_task.preview_images = lambda info, n=8: x[:n].clone()  # what RestoreTask shows in its grids
        source = "synthetic"
    rt = init_runtime(cfg.device, cfg.precision)

    class GraphEngine(Engine):
        """The engine, with the networks compiled in ``reduce-overhead`` mode: forward and backward replayed
        as CUDA graphs (one launch each) instead of one launch per kernel."""

        def fast(self, name: str, module: Any, method: str | None = None) -> Any:
            key = (name, method)
            if key not in self._fast:
                self._fast[key] = torch.compile(module, mode="reduce-overhead")
            return self._fast[key]

    out = Path(tempfile.mkdtemp(prefix=f"bench-restore-{variant}-"))
    engine = (GraphEngine if mode == "cudagraphs" else Engine)(cfg, rt, out)
    task = restore_task.RestoreTask(rcfg, p.views, engine, info)
    marks: dict[int, float] = {}

    def on_step(done: int, eng: Any, t: Any) -> None:
        if done in (args.warmup, args.warmup + args.steps):
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            marks[done] = time.perf_counter()

    t0 = time.perf_counter()
    fit(task, engine, x, y, show_progress=False, on_step=on_step)
    dt = marks[args.warmup + args.steps] - marks[args.warmup]
    return {
        "batch_size": batch,
        "mode": mode,
        "channels_last": not nchw,
        "source": source,
        "precision": str(rt.dtype).replace("torch.", "") if rt.dtype else "fp32",
        "img_s": args.steps * batch / dt,
        "ms_per_step": 1000 * dt / args.steps,
        "warmup_s": marks[args.warmup] - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", default="gpu-denoise-noise25", help="restorer settings (flows/profiles name or path)")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--source", choices=["auto", "synthetic"], default="auto")
    ap.add_argument("--images", type=int, default=20000, help="synthetic images (when no prepared dataset)")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per variant")
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal: batch / 64, 4 steps, 2 warm-up")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        args.steps, args.warmup, args.images = 4, 2, min(args.images, 200)
    for v in args.variants:
        if not VARIANT.match(v):
            ap.error(f"--variants {v!r}: expected b<batch>-<eager|compile|cudagraphs>[-nchw]")
    if args.only:
        try:
            print("RESULT " + json.dumps(run_variant(args, args.only)), flush=True)
            return 0
        except Exception as err:  # noqa: BLE001 - one failing variant must not hide the others
            print(f"ERROR {type(err).__name__}: {(str(err).splitlines() or [''])[0]}"[:400], flush=True)
            return 1
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    passthrough = [
        "--device",
        args.device,
        "--profile",
        args.profile,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--source",
        args.source,
        "--images",
        str(args.images),
    ] + (["--tiny"] if args.tiny else [])
    results: dict[str, dict[str, Any]] = {}
    for v in args.variants:
        t = time.perf_counter()
        try:
            p = subprocess.run(
                [sys.executable, __file__, "--only", v, *passthrough],
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
                res = {"error": (why or (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1])[:400]}
        except subprocess.TimeoutExpired:
            res = {"error": f"timed out after {args.timeout:.0f} s"}
        res["wall_s"] = round(time.perf_counter() - t, 1)
        results[v] = res
        print(
            json.dumps(
                {
                    "bench": "restore",
                    "variant": v,
                    **{k: round(x, 2) if isinstance(x, float) else x for k, x in res.items()},
                }
            ),
            flush=True,
        )
        if args.json:  # after every variant, so a run stopped from outside keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"results": results}, indent=2))
    base = results.get(args.variants[0], {}).get("img_s")
    summary = {
        "bench": "restore-summary",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "profile": args.profile,
        "baseline": args.variants[0],
        "img_s": {v: round(r["img_s"], 1) for v, r in results.items() if "img_s" in r},
        "ratio_vs_baseline": {v: round(r["img_s"] / base, 2) for v, r in results.items() if base and "img_s" in r},
        "failed": {v: r["error"] for v, r in results.items() if "error" in r},
    }
    print(json.dumps(summary), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "summary": summary}, indent=2))
    return 0 if base else 1


if __name__ == "__main__":
    raise SystemExit(main())
