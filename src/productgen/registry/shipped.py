"""Shipped champions: trained models committed with the code, so a fresh clone generates, enhances and stylises
with good models before anyone has trained for hours.

    champions/<task>/            a model folder as training writes it (config.json + *.safetensors)
    champions/<task>/card.json   how it was trained and what it scored: protocol, figure, profile, steps, device,
                                 wall time, command, the dataset's content hash

Why plain git and not DVC: the weights are small at 28 px (a few MB each) and every clone, CI runner and
air-gapped worker then has them with nothing to pull; DVC's remote (``.dvc/config``) is a per-machine cache that
a fresh clone elsewhere does not reach. The cards are the one place the README's quality table is read from
(``productgen registry ship --table``).

Commands use a shipped champion only when no model of the task was trained in the workspace
(``artifacts/train/<task>/model``) and none was named: what you trained always wins, and the command says which
one it used. ``productgen registry ship`` registers them in the MLflow store as champions (when a task has none),
so ``productgen web`` and ``mlflow models serve`` serve them too. Core module: no MLOps imports.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from productgen.common import atomic

FOLDER = "champions"
CARD = "card.json"


ENV = "PRODUCTGEN_CHAMPIONS"


def root() -> Path:
    """``$PRODUCTGEN_CHAMPIONS``, else ``./champions`` in the working directory, else the one of the source
    checkout this package runs from (an editable install run from another folder)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    here = Path(FOLDER)
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / FOLDER


def shipped(task: str) -> Path | None:
    folder = root() / task
    return folder if (folder / "config.json").is_file() else None


def default_model(task: str, trained: Path, quiet: bool = False) -> Path:
    """The model a command uses when none was named: the workspace's trained one, else the shipped champion
    (announced in one line on stderr), else ``trained`` (whose absence the caller reports as usual)."""
    if (trained / "config.json").is_file():
        return trained
    found = shipped(task)
    if found is None:
        return trained
    if not quiet:
        card = read_card(found)
        what = f" ({card['summary']})" if card.get("summary") else ""
        print(f"note: no {trained}; using the shipped champion {found}{what}", file=sys.stderr)
    return found


def read_card(folder: Path) -> dict[str, Any]:
    path = folder / CARD
    if not path.is_file():
        return {}
    card: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return card


def write_card(folder: Path, card: dict[str, Any]) -> None:
    atomic.write_json(folder / CARD, card)


def cards() -> dict[str, dict[str, Any]]:
    """Every shipped champion's card, by task."""
    base = root()
    if not base.is_dir():
        return {}
    return {p.name: read_card(p) for p in sorted(base.iterdir()) if (p / "config.json").is_file()}


def table(rows: dict[str, dict[str, Any]] | None = None) -> str:
    """The README's quality table (markdown), from the cards."""
    rows = cards() if rows is None else rows
    lines = ["| model | protocol | ours | anchor | device, time | profile, steps |", "|---|---|---|---|---|---|"]
    for task, c in rows.items():
        lines.append(
            f"| {task} | {c.get('protocol', '?')} | {c.get('figure', '?')} | {c.get('anchor', '')} | "
            f"{c.get('device', '?')}, {c.get('train_time', '?')} | {c.get('profile', '?')}, "
            f"{c.get('steps', '?')} steps |"
        )
    return "\n".join(lines)


def weights_digest(folder: Path) -> str:
    """sha256 over the folder's safetensors files (name and bytes), so shipping the same weights twice is seen."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def package(
    task: str,
    model_dir: Path,
    metrics: dict[str, Any],
    card: dict[str, Any],
    keep: tuple[str, ...] = (),
    half: bool = True,
) -> Path:
    """Copy a trained model folder (config.json + the safetensors in ``keep``, default all) into
    ``champions/<task>`` with its card; the old folder is replaced only once the new one is complete.

    ``half``: floating-point tensors are stored as fp16 (loading casts them back to fp32). Why: the tracked
    tree travels with every GPU call (64 MiB in all, docs/gpu.md), and fp32 copies of the shipped models would
    eat most of it. :func:`agreement` measures what that costs in output grey levels; the card records it.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not a model folder)")
    dest = root() / task
    staging = dest.with_name(f".{task}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name == "config.json":
            shutil.copy2(f, staging / f.name)
        elif f.suffix == ".safetensors" and (not keep or f.stem in keep):
            tensors = load_file(str(f))
            if half:
                tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
            save_file(tensors, str(staging / f.name))
    scalar = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if "per_category" in metrics:
        scalar["per_category"] = metrics["per_category"]
    card = {"task": task, **card, "weights_dtype": "float16" if half else "float32"}
    if half:
        card["fp16_agreement"] = agreement(model_dir, staging)
    write_card(staging, {**card, "metrics": scalar, "weights_sha256": weights_digest(staging)})
    old = dest.with_name(f".{task}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def agreement(reference: Path, candidate: Path, n: int = 500, seed: int = 0) -> dict[str, float]:
    """How far ``candidate``'s outputs are from ``reference``'s on the same inputs, in uint8 grey levels: the
    share of pixels that differ and the largest difference. Generators draw ``n`` images from the same noise and
    labels; image-to-image models map the same seeded random products (the built-in test split when prepared,
    else noise images)."""
    import torch

    from productgen.models.io import read_config
    from productgen.tasks import for_model

    spec = for_model(str(read_config(reference).get("model")))
    if spec is not None and spec.generates:
        from productgen.apply.generation import sample
        from productgen.models.io import load_generator

        (a, cfg), (b, _) = load_generator(reference), load_generator(candidate)
        z_dim = cfg[spec.section]["z_dim"]
        labels = torch.arange(n) % int(cfg["num_classes"])
        with torch.no_grad():
            x, y = torch.from_numpy(sample(a, z_dim, labels, seed)), torch.from_numpy(sample(b, z_dim, labels, seed))
    else:
        from productgen.models.predict import load_predictor

        pa, pb = load_predictor(reference), load_predictor(candidate)
        cfg = read_config(reference)
        res, ch = int(cfg.get("resolution", 28)), int(cfg.get("channels", 1))
        images = torch.randint(
            0, 256, (min(n, 32), ch, res, res), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
        )
        options: dict[str, Any] = {}
        if spec is not None and spec.style_input:  # arbitrary style: one built-in style stands in for the user's
            from productgen.models.styles import load_style, style_names

            options["style"] = torch.from_numpy(load_style(style_names()[0], 256).copy()).permute(2, 0, 1)[None]
        with torch.no_grad():
            x, y = pa(images, **options), pb(images, **options)
    diff = (x.int() - y.int()).abs()
    return {"pixels_differing": round(float((diff > 0).float().mean()), 5), "max_grey_levels": int(diff.max())}
