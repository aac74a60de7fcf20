"""The last step of a ``champion-<task>`` DVC stage, and how to run such a frozen stage: ``--reproduce``.

    python -m productgen.pipeline.champion gan --reproduce     # retrain, evaluate, package, record in dvc.lock

The packaging step packages a freshly trained and evaluated model as the shipped
champion ``champions/<task>`` with its card (:func:`productgen.registry.shipped.package`: fp16 weights, the fp16
agreement check, the weights' digest).

    python -m productgen.pipeline.champion gan --profile cpu-gan \\
        --model artifacts/train/champion-gan/model --metrics artifacts/eval/champion-gan/metrics.json

The card keeps the descriptive fields of the champion it replaces (summary, protocol, anchor, device) and writes
what this run measured: the figure (from the metrics), the steps (from the model's config), the training time
(from the run folder), the profile and the command (the DVC stage's). The safetensors files shipped are those the
current champion ships (the GAN's generator, not its discriminator), all of them for a new task.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from productgen.registry import shipped


def figure(task: str, metrics: dict[str, Any]) -> str:
    """The card's one-line figure, as the README's quality table shows it."""
    if "fid_identity" in metrics:  # CycleGAN: the win over not translating, with KID's spread when measured
        text = f"FID {metrics['fid']:.1f} (not translating: {metrics['fid_identity']:.1f})"
        if "kid_identity_mean" in metrics:
            text += (
                f"; KID x 1000 {1000 * metrics['kid_mean']:.1f} +- {1000 * metrics['kid_std']:.1f} "
                f"(not translating: {1000 * metrics['kid_identity_mean']:.1f} +- "
                f"{1000 * metrics['kid_identity_std']:.1f})"
            )
        return text
    if "fid" in metrics and "psnr" not in metrics:
        return f"FID {metrics['fid']:.2f}"
    if "psnr" in metrics and "fid" in metrics:  # pix2pix
        return f"{metrics['psnr']:.2f} dB (+{metrics.get('gain_db', float('nan')):.1f} dB), FID {metrics['fid']:.1f}"
    if "psnr" in metrics:
        view = str(metrics.get("view", ""))
        what = "noisy" if view.startswith("noise") else "degraded"
        return (
            f"{metrics['psnr']:.2f} dB / {metrics.get('ssim', float('nan')):.3f} "
            f"(+{metrics.get('gain_db', float('nan')):.1f} dB over the {what} input)"
        )
    if "style_score" in metrics:
        return f"style {metrics['style_score']:.2f}, product SSIM {metrics.get('product_ssim', float('nan')):.2f}"
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))


def train_minutes(model_dir: Path) -> str | None:
    """Wall time of the run: from its train_config.json (written as training starts) to the model's config.json."""
    start, end = model_dir.parent / "train_config.json", model_dir / "config.json"
    if not (start.is_file() and end.is_file()):
        return None
    return f"{max(0.0, end.stat().st_mtime - start.stat().st_mtime) / 60:.0f} min"


def reproduce(root: Path, stage: str) -> int:
    """Run a frozen stage's command, then record its deps and outputs in dvc.lock (``dvc commit``): what ``dvc
    repro`` does for a stage that is not frozen. (``dvc repro -f`` on a frozen stage only records the hashes, and
    ``dvc unfreeze`` / ``freeze`` re-indent all of dvc.yaml.)"""
    import subprocess
    import sys

    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    if stage not in stages:
        print(f"dvc.yaml: no stage {stage!r}", file=sys.stderr)
        return 1
    cmd = stages[stage]["cmd"]
    cmd = " && ".join(cmd) if isinstance(cmd, list) else cmd
    print(f"Running frozen stage '{stage}':\n> {cmd}", flush=True)
    if subprocess.run(["bash", "-c", cmd], cwd=root).returncode != 0:
        print(f"{stage}: the command failed; dvc.lock and the shipped folder are unchanged", file=sys.stderr)
        return 1
    subprocess.run([sys.executable, "-m", "dvc", "commit", "-f", "-q", stage], cwd=root, check=True)
    print(f"{stage}: reproduced; dvc.lock updated (commit it with the outputs)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task")
    ap.add_argument("--model", type=Path, help="the trained model folder")
    ap.add_argument("--metrics", type=Path, help="its evaluation's metrics.json")
    ap.add_argument("--profile", help="the profile it was trained and evaluated with")
    ap.add_argument(
        "--reproduce", action="store_true", help="run the frozen stage champion-TASK and record it in dvc.lock"
    )
    ap.add_argument("--stage", help="with --reproduce: the stage (default champion-TASK)")
    ap.add_argument("--root", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    task: str = args.task
    if args.reproduce:
        return reproduce(args.root, args.stage or f"champion-{task}")
    if args.model is None or args.metrics is None or args.profile is None:
        ap.error("--model, --metrics and --profile are required (or --reproduce)")
    old_folder = shipped.shipped(task)
    old = shipped.read_card(old_folder) if old_folder else {}
    keep = tuple(sorted(f.stem for f in old_folder.glob("*.safetensors"))) if old_folder else ()
    metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
    config = json.loads((args.model / "config.json").read_text(encoding="utf-8"))
    keys = ("summary", "protocol", "anchor", "device")
    card: dict[str, Any] = {k: old[k] for k in keys if k in old}
    card |= {
        "figure": figure(task, metrics),
        "train_time": train_minutes(args.model) or old.get("train_time", "?"),
        "profile": args.profile,
        "steps": int(config.get("step", 0)),
        "command": f"python -m productgen.pipeline.champion {task} --reproduce  (DVC stage champion-{task})",
    }
    if metrics.get("content_hash") or config.get("dataset", {}).get("content_hash"):
        card["eval_set"] = {
            "content_hash": metrics.get("content_hash") or config["dataset"]["content_hash"],
            "split": metrics.get("split", "test"),
        }
    dest = shipped.package(task, args.model, metrics, card, keep=keep)
    print(f"{task}: {card['figure']} -> {dest} (card {dest / shipped.CARD})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
