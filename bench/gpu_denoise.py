"""Train several restorers side by side on one GPU for a fixed time budget, then evaluate them.

    PYTHONPATH=src python bench/gpu_denoise.py --budget 240 --runs noise25:gpu-denoise-noise25 \
        noise15:gpu-denoise-noise15 --out artifacts/gpu-denoise

Why a driver: a cosine learning-rate schedule needs its step count up front, but how many steps fit into a
lease of GPU time depends on the GPU and on how many runs share it. So every run first trains a few hundred
steps concurrently with the others (the same sharing as later), the measured steps/s give each run's
``max_steps`` (= ``decay_steps``) for ``--budget`` seconds, and then the real runs start from scratch with
those fixed numbers, written into a profile next to the run (``profile.yaml``), so any run can be repeated
exactly with ``productgen train restore --profile RUN/profile.yaml``. Each finished model is evaluated on the
whole test split with ``productgen evaluate --task restore`` (PSNR / SSIM next to the degraded input).

Only the productgen core and its CLI are used (no MLflow, no Prefect): it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "productgen", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def _write_profile(path: Path, base: Path, overrides: dict[str, dict[str, Any]]) -> None:
    """``base`` profile with ``overrides`` (section -> key -> value) merged in, as YAML-compatible JSON."""
    import yaml

    doc = yaml.safe_load(base.read_text()) or {}
    for section, values in overrides.items():
        doc.setdefault(section, {}).update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _rate(metrics: Path) -> float:
    """Steps/s over the last half of a calibration run's log (the first lines include cudnn autotuning)."""
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    if len(rows) < 3:
        raise RuntimeError(f"{metrics}: too few log lines to measure speed")
    tail = rows[len(rows) // 2 :]
    batch = json.loads((metrics.parent / "train_config.json").read_text())["train"]["batch_size"]
    return sum(r["images_per_second"] for r in tail) / len(tail) / batch


def _run_all(cmds: dict[str, list[str]], logs: Path) -> dict[str, int]:
    logs.mkdir(parents=True, exist_ok=True)
    procs = {
        name: subprocess.Popen(
            cmd, env=_env(), cwd=ROOT, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT
        )
        for name, cmd in cmds.items()
    }
    return {name: p.wait() for name, p in procs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--runs", nargs="+", required=True, help="NAME:PROFILE pairs (PROFILE: a name in flows/profiles or a YAML path)"
    )
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per run (all run at once)")
    ap.add_argument("--calibration-steps", type=int, default=300)
    ap.add_argument("--safety", type=float, default=0.9, help="fraction of the measured speed to plan with")
    ap.add_argument("--out", type=Path, default=Path("artifacts/gpu-denoise"))
    ap.add_argument("--prepared", default=None, help="prepared dataset (default: the profile's data.out)")
    ap.add_argument("--device", default=None, help="train and evaluate here (default: the profiles' train.device)")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()
    runs: dict[str, Path] = {}
    for item in args.runs:
        name, _, prof = item.partition(":")
        path = Path(prof) if prof.endswith((".yaml", ".yml")) else ROOT / "flows/profiles" / f"{prof}.yaml"
        if not name or not path.is_file():
            ap.error(f"--runs {item!r}: expected NAME:PROFILE with an existing profile ({path})")
        runs[name] = path
    extra = ["--prepared", args.prepared] if args.prepared else []
    dev = ["--device", args.device] if args.device else []

    # 1) calibration: every run at once, as in the real phase
    t0 = time.perf_counter()
    cal = {
        name: _cli(
            "train",
            "restore",
            "--profile",
            str(p),
            "--no-track",
            "-q",
            "-o",
            str(out / "calibrate" / name),
            "--max-steps",
            str(args.calibration_steps),
            *extra,
            *dev,
        )
        for name, p in runs.items()
    }
    codes = _run_all(cal, out / "logs-calibrate")
    if any(codes.values()):
        print(f"calibration failed: {codes}; logs in {out / 'logs-calibrate'}")
        return 1
    steps = {}
    for name in runs:
        rate = _rate(out / "calibrate" / name / "metrics.jsonl")
        steps[name] = max(100, int(rate * args.safety * args.budget) // 100 * 100)
        print(
            f"{name}: {rate:.1f} steps/s while sharing the GPU -> {steps[name]} steps for {args.budget:.0f} s",
            flush=True,
        )
    print(f"calibration took {time.perf_counter() - t0:.0f} s", flush=True)

    # 2) the real runs, from scratch, with fixed step counts recorded in each run's profile
    t1 = time.perf_counter()
    cmds = {}
    for name, base in runs.items():
        run_dir = out / name
        profile = run_dir / "profile.yaml"
        _write_profile(
            profile,
            base,
            {
                "train": {"max_steps": steps[name], "out": str(run_dir / "train")},
                "restore": {"decay_steps": steps[name]},
            },
        )
        cmds[name] = _cli("train", "restore", "--profile", str(profile), "--no-track", "-q", *extra, *dev)
    codes = _run_all(cmds, out / "logs-train")
    print(f"training took {time.perf_counter() - t1:.0f} s; exit codes {codes}", flush=True)

    # 3) evaluation on the whole test split, every model at once
    evals = {
        name: _cli(
            "evaluate",
            "--task",
            "restore",
            "--profile",
            str(out / name / "profile.yaml"),
            "--model",
            str(out / name / "train" / "model"),
            "--out",
            str(out / name / "eval"),
            "--no-track",
            "-q",
            *extra,
            *(dev or ["--device", "auto"]),
        )
        for name in runs
        if codes[name] == 0
    }
    ecodes = _run_all(evals, out / "logs-eval")
    print(f"\n{'run':<24} {'view':<8} {'steps':>7} {'input dB':>9} {'model dB':>9} {'gain':>7} {'SSIM':>7}")
    summary = {}
    for name in evals:
        mfile = out / name / "eval" / "metrics.json"
        if ecodes[name] != 0 or not mfile.is_file():
            print(f"{name:<24} evaluation failed (log: {out / 'logs-eval' / (name + '.log')})")
            continue
        m = json.loads(mfile.read_text())
        summary[name] = {**m, "steps": steps[name]}
        print(
            f"{name:<24} {m['view']:<8} {steps[name]:>7} {m['baseline_psnr']:>9.2f} {m['psnr']:>9.2f} "
            f"{m['gain_db']:>+7.2f} {m['ssim']:>7.4f}"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0 if summary and all(v == 0 for v in ecodes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
