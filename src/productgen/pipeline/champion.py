"""The last step of a ``champion-<task>`` DVC stage: package a freshly trained and evaluated model as the shipped
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task")
    ap.add_argument("--model", type=Path, required=True, help="the trained model folder")
    ap.add_argument("--metrics", type=Path, required=True, help="its evaluation's metrics.json")
    ap.add_argument("--profile", required=True, help="the profile it was trained and evaluated with")
    args = ap.parse_args(argv)
    task: str = args.task
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
        "command": f"dvc unfreeze champion-{task} && dvc repro champion-{task}; dvc freeze champion-{task}",
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
