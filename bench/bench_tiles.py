"""Peak memory of large photos through the default restorer: tiled inference (productgen.apply.folders.predict_image,
what ``productgen enhance`` runs) against whole-image inference on a size that fits, in the same run.

Each measurement runs in its own process (peak RSS from ``os.wait4``, so one case cannot inflate another).
The network is the default restorer of params.yaml (``restore:``: width 32, 2 levels, GroupNorm) with random
weights (a trained one costs the same); the photo is synthetic (gradients, stripes, noise, a white patch).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_tiles.py                       # 6000x6000 vs 1024x1024
    .venv/bin/python bench/bench_tiles.py --size 6000 --no-exact                  # one pass: peak RSS only
    .venv/bin/python bench/bench_tiles.py --fit 768 --size 2000 --memory-mb 1024

Prints one row per case and the ratios against whole-image inference at ``--fit``; with ``--fit`` the tiled
output is also compared with the whole-image output (max difference in grey levels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _image(n: int):  # noqa: ANN202 - numpy imported lazily (the parent process stays light)
    import numpy as np

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, n, dtype=np.float32)
    noise = rng.integers(0, 40, (256, 256, 3), dtype=np.uint8)
    img = np.tile(noise, (n // 256 + 1, n // 256 + 1, 1))[:n, :n]
    img = (img + ramp[:, None, None] * 0.5 + ramp[None, :, None] * np.array([0.2, 0.4, 0.6], np.float32)).astype(
        np.uint8
    )
    img[n // 4 : n // 2, n // 3 : 2 * n // 3] = 250
    return img


def _predictor():  # noqa: ANN202
    import dataclasses

    import torch

    from productgen.config import load_params
    from productgen.models.restore import ImagePredictor, build_unet

    r = load_params(ROOT / "params.yaml").restore
    cfg = dataclasses.asdict(r)
    torch.manual_seed(0)
    net = build_unet(3, cfg)
    for p in net.head.parameters():  # not the identity an untrained restorer starts as
        torch.nn.init.normal_(p, std=0.02)
    return ImagePredictor(net, {"channels": 3, "model": "restore", "restore": cfg}, r.view, r.levels, "cpu"), cfg


def child(mode: str, size: int, memory_mb: float, exact: bool, out: str | None) -> None:
    import numpy as np
    import torch

    from productgen.apply.folders import bytes_per_pixel, plan_tile, predict_image, run_batch

    pred, cfg = _predictor()
    img = _image(size)
    bpp = bytes_per_pixel(pred)
    before_mb = _hwm_mb()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "whole":
            y = run_batch(pred, [img])[0]
            tile = None
        else:
            tile = plan_tile(pred, size, size, memory_mb, bpp)
            y = predict_image(pred, img, memory_mb=memory_mb, exact=exact)
    seconds = time.perf_counter() - t0
    if out:
        np.save(out, y)
    print(json.dumps({"seconds": seconds, "tile": tile, "bytes_per_pixel": bpp, "before_mb": before_mb, "net": cfg}))


def _hwm_mb() -> float:
    """Peak RSS so far (torch, the model and the photo loaded; before inference)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(mode: str, size: int, memory_mb: float, exact: bool, out: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--size", str(size), "--memory-mb", str(memory_mb)]
    cmd += ["--exact" if exact else "--no-exact"] + (["--save", out] if out else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"mode": mode, "size": size, "failed": f"exit {proc.returncode}"}
    row = json.loads(stdout.strip().splitlines()[-1])
    row.update(mode=mode, size=size, peak_mb=usage.ru_maxrss / 1024, cpu_s=usage.ru_utime + usage.ru_stime)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=6000, help="side of the large photo (tiled)")
    ap.add_argument("--fit", type=int, default=1024, help="side of the photo that fits whole (0: skip)")
    ap.add_argument("--memory-mb", type=float, default=2048, help="the --memory-mb of enhance")
    ap.add_argument(
        "--exact",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="whole-image GroupNorm statistics (the default of enhance; ~6 passes on this net)",
    )
    ap.add_argument("--child", choices=["whole", "tiled"], help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.size, args.memory_mb, args.exact, args.save)
        return
    import tempfile

    import numpy as np

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-tiles-"))
    if args.fit:
        rows.append(measure("whole", args.fit, args.memory_mb, True, str(tmp / "whole.npy")))
        # the same photo forced into tiles: a budget that holds about a quarter of it
        bpp = rows[0].get("bytes_per_pixel", 4000)
        small_budget = bpp * (args.fit // 2 + 2 * 64) ** 2 / 2**20
        rows.append(measure("tiled", args.fit, small_budget, args.exact, str(tmp / "tiled.npy")))
    rows.append(measure("tiled", args.size, args.memory_mb, args.exact))
    print(f"{'case':<22}{'tile':>6}{'wall s':>9}{'cpu s':>9}{'peak RSS MB':>13}{'MB per MP':>11}")
    for r in rows:
        if "failed" in r:
            print(f"{r['mode']} {r['size']}x{r['size']}: {r['failed']}")
            continue
        mp = r["size"] ** 2 / 1e6
        print(
            f"{r['mode'] + ' ' + str(r['size']) + 'px':<22}{str(r['tile'] or '-'):>6}{r['seconds']:>9.1f}"
            f"{r['cpu_s']:>9.1f}{r['peak_mb']:>13.0f}{r['peak_mb'] / mp:>11.1f}"
        )
    ok = [r for r in rows if "failed" not in r]
    if args.fit and len(ok) >= 2 and ok[0]["mode"] == "whole":
        base = ok[0]
        whole, tiled = np.load(tmp / "whole.npy"), np.load(tmp / "tiled.npy")
        diff = np.abs(whole.astype(int) - tiled.astype(int))
        print(
            f"tiled vs whole at {args.fit}px: max |diff| {diff.max()} grey levels, mean {diff.mean():.4f}; "
            f"time x{ok[1]['seconds'] / base['seconds']:.2f}"
        )
        big = ok[-1]
        est_whole = big["before_mb"] + (base["peak_mb"] - base["before_mb"]) * big["size"] ** 2 / base["size"] ** 2
        print(
            f"{big['size']}px tiled: peak {big['peak_mb']:.0f} MB (target < 4096); whole-image at that size would "
            f"need about {est_whole:,.0f} MB (scaled from {base['size']}px); ratio x{est_whole / big['peak_mb']:.1f}"
        )
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
