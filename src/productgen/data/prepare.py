"""``productgen data prepare``: source images -> square uint8 shards + manifest + quarantine list.

Output folder layout (written to a staging folder and swapped in atomically)::

    dataset.json      format, resolution, mode, classes, per-split shards with sha256, content hash
    manifest.csv      id, source_path, sha256, width, height, mode, format, category, label, split, shard, index
    rejected.csv      source files that could not become images, each with its reason
    shards/{split}-{k:05d}.safetensors
    preview.png       a few training images per category

Source files are only ever read. An image's split is a pure function of the split seed and its sha256
(:func:`split_of`), so a catalog that grows week by week never moves an image from one split to another, and
all copies of the same bytes land in the same split, so duplicates can never leak from train into test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from productgen.common import atomic
from productgen.common.errors import UserError
from productgen.common.grids import make_grid, save_png
from productgen.common.locks import locks_folder
from productgen.common.progress import progress
from productgen.config import DataConfig
from productgen.data import fashion_mnist
from productgen.data.decode import Rejected, decode, normalise_mode, resize_pad
from productgen.data.shards import write_shard
from productgen.data.sources import SourceItem, SourceListing, list_source

FORMAT = "productgen-prepared"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = (
    "id",
    "source_path",
    "sha256",
    "width",
    "height",
    "mode",
    "format",
    "category",
    "label",
    "split",
    "shard",
    "index",
)
REJECTED_COLUMNS = ("id", "source_path", "category", "sha256", "reason")


@dataclass(frozen=True)
class PrepareResult:
    out: Path
    counts: dict[str, int]
    n_rejected: int
    n_ignored: int
    classes: list[str]
    content_hash: str


def _read_bytes(item: SourceItem, max_bytes: int) -> bytes:
    assert item.path is not None
    try:
        size = item.path.stat().st_size
        if size > max_bytes:
            raise Rejected(f"file is {size:,} bytes, over the data.max_file_bytes limit of {max_bytes:,}")
        with open(item.path, "rb") as fh:
            return fh.read(max_bytes + 1)
    except Rejected:
        raise
    except OSError as err:
        raise Rejected(f"cannot read file ({err.strerror or err})") from None


def _check_output(cfg: DataConfig, out: Path) -> None:
    """Refuse outputs that would overwrite user data or sit inside the source."""
    src = Path(cfg.input).resolve()
    dst = out.resolve()
    if dst == src or dst.is_relative_to(src) or (src.is_dir() and src.is_relative_to(dst)):
        raise UserError(f"{out}: output folder must not overlap the source {cfg.input}")
    if dst.exists() and any(dst.iterdir()) and not (dst / "dataset.json").is_file():
        raise UserError(f"{out}: exists and is not a prepared dataset; choose an empty or new --out folder")


def split_of(sha256: str, seed: int, fractions: dict[str, float]) -> str:
    """The split of an image: a pure function of the split seed and the image's content.

    ``sha256(seed:content)`` is read as a number in [0, 1) and cut into buckets test | val | train by the
    configured fractions. Nothing else enters, so adding, removing or renaming other images never moves an
    image, and copies of the same bytes always share a split (duplicates cannot leak from train into test).
    """
    u = int(hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()[:15], 16) / 16**15
    if u < fractions["test"]:
        return "test"
    return "val" if u < fractions["test"] + fractions["val"] else "train"


def split_targets(cfg: DataConfig) -> dict[str, float]:
    """The share of each split :func:`split_of` aims at; with the official test split, the shares of train and
    val among the remaining images (the official test images are not drawn)."""
    fractions = cfg.split
    if cfg.source == "builtin" and cfg.official_test_split:
        val_share = fractions.val / max(fractions.train + fractions.val, 1e-12)
        return {"train": 1.0 - val_share, "val": val_share, "test": 0.0}
    return {"train": fractions.train, "val": fractions.val, "test": fractions.test}


def assign_splits(rows: list[dict[str, Any]], cfg: DataConfig) -> None:
    """Set ``row["split"]`` from each image's content (:func:`split_of`); the built-in dataset keeps the official
    Fashion-MNIST test split and splits only the official training images into train / val."""
    shares = split_targets(cfg)
    official = cfg.source == "builtin" and cfg.official_test_split
    official_test = {row["sha256"] for row in rows if official and row["_official"] == "test"}
    for row in rows:
        h = row["sha256"]
        row["split"] = "test" if h in official_test else split_of(h, cfg.seed, shares)


def split_fractions(rows: list[dict[str, Any]], drawn_only: bool = False) -> dict[str, dict[str, float]]:
    """Achieved share of each split per category, with the image count ``n`` (``data validate`` checks them
    against :func:`split_targets`); ``drawn_only`` leaves out the official test images."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {s: 0 for s in SPLITS})
    for row in rows:
        if not (drawn_only and row.get("_official") == "test"):
            counts[row["category"]][row["split"]] += 1
    return {
        c: {s: n / max(1, sum(v.values())) for s, n in v.items()} | {"n": sum(v.values())}
        for c, v in sorted(counts.items())
    }


def _decode_item(item: SourceItem, cfg: DataConfig, channels: int) -> tuple[np.ndarray, dict[str, Any]]:
    if item.pixels is not None:
        raw = np.ascontiguousarray(item.pixels)
        sha = hashlib.sha256(raw.tobytes()).hexdigest()
        image = normalise_mode(Image.fromarray(raw, mode="L"), cfg.mode)
        info = {"width": raw.shape[1], "height": raw.shape[0], "mode": "L", "format": "IDX"}
        fill = 0  # Fashion-MNIST products sit on black; pad (never needed at 28 px) to match
    else:
        data = _read_bytes(item, cfg.max_file_bytes)
        sha = hashlib.sha256(data).hexdigest()
        dec = decode(data, cfg.mode, cfg.max_pixels)
        image = dec.image
        info = {"width": dec.width, "height": dec.height, "mode": dec.mode, "format": dec.format}
        fill = 255
    arr = np.asarray(resize_pad(image, cfg.resolution, fill=fill), dtype=np.uint8)
    if channels == 1:
        arr = arr[..., None]
    return arr, {"sha256": sha, **info}


def _preview(images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int = 8) -> Image.Image:
    picks: list[np.ndarray] = []
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)[:per_class]
        block = images[idx]
        if len(block) < per_class:
            pad = np.full((per_class - len(block), *images.shape[1:]), 128, np.uint8)
            block = np.concatenate([block, pad])
        picks.append(block)
    scale = max(1, 64 // images.shape[1])
    return make_grid(np.concatenate(picks), ncol=per_class, scale=scale, row_labels=classes)


def _remove_stale_staging(out: Path) -> None:
    """Remove staging folders of ``out`` left by processes that no longer run (killed mid-prepare)."""
    for old in out.parent.glob(f".{out.name}.staging-*"):
        try:
            pid = int(old.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _check_free_space(folder: Path, pixel_bytes: int) -> None:
    """Refuse to start when the disk cannot hold the scratch pixels plus the shards (each about
    ``pixel_bytes``) with a margin, instead of failing hours in with a full disk."""
    need = 2 * pixel_bytes + pixel_bytes // 10 + 16 * 1024 * 1024
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UserError(
            f"{folder.parent}: {free / 2**20:,.0f} MB free, but prepare needs about "
            f"{need / 2**20:,.0f} MB (scratch pixels + shards); free some space or choose "
            "another --out on a larger disk"
        )


@locks_folder(lambda cfg, *_, **__: cfg.out, "the prepared dataset")  # one writer per output folder
def prepare(cfg: DataConfig, show_progress: bool = True) -> PrepareResult:
    """Prepare the dataset described by ``cfg`` into ``cfg.out``; see the module docstring for the layout."""
    out = Path(cfg.out)
    listing: SourceListing = list_source(cfg)
    _check_output(cfg, out)
    channels = 3 if cfg.mode == "RGB" else 1
    res = cfg.resolution

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    _remove_stale_staging(out)
    try:
        if staging.exists():
            shutil.rmtree(staging)
        (staging / "shards").mkdir(parents=True)
        candidates = [it for it in listing.items if it.problem is None]
        rejected: list[dict[str, Any]] = [
            {"id": it.id, "source_path": it.source_path, "category": it.category, "sha256": "", "reason": it.problem}
            for it in listing.items
            if it.problem is not None
        ]
        _check_free_space(staging, len(candidates) * res * res * channels)
        # Spill prepared pixels to a scratch file with ordinary writes (one decode per image, bounded memory), and
        # map it read-only once complete. Never write through a memory map: on a full disk a write into a sparse
        # map is a SIGBUS that kills the process with no message and leaves the staging folder behind; a write()
        # is an OSError (ENOSPC) that removes the staging folder and becomes one line.
        spill_path = staging / "_pixels.u8"
        rows: list[dict[str, Any]] = []
        with open(spill_path, "wb") as spill:
            for item in progress(candidates, desc="prepare", unit="img", enabled=show_progress):
                try:
                    arr, info = _decode_item(item, cfg, channels)
                except Rejected as err:
                    rejected.append(
                        {
                            "id": item.id,
                            "source_path": item.source_path,
                            "category": item.category,
                            "sha256": "",
                            "reason": str(err),
                        }
                    )
                    continue
                spill.write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
                rows.append(
                    {
                        "id": item.id,
                        "source_path": item.source_path,
                        "category": item.category,
                        "_official": item.official_split,
                        "_row": len(rows),
                        **info,
                    }
                )
        if not rows:
            raise UserError(
                f"{cfg.input}: no usable images ({len(rejected)} rejected, {len(listing.ignored)} ignored); "
                "see the reasons with 'productgen data validate' or check the path"
            )
        pixels = np.memmap(spill_path, dtype=np.uint8, mode="r", shape=(len(rows), res, res, channels))
        classes = list(fashion_mnist.CLASSES) if cfg.source == "builtin" else sorted({r["category"] for r in rows})
        label_of = {c: i for i, c in enumerate(classes)}
        assign_splits(rows, cfg)

        bytes_per_image = res * res * channels
        per_shard = max(1, cfg.shard_bytes // bytes_per_image)
        shard_info: dict[str, list[dict[str, Any]]] = {}
        manifest: list[dict[str, Any]] = []
        for split in SPLITS:
            split_rows = sorted((r for r in rows if r["split"] == split), key=lambda r: r["id"])
            shard_info[split] = []
            for k, start in enumerate(range(0, len(split_rows), per_shard)):
                chunk = split_rows[start : start + per_shard]
                name = f"{split}-{k:05d}.safetensors"
                images = np.stack([pixels[r["_row"]] for r in chunk])
                labels = np.array([label_of[r["category"]] for r in chunk], dtype=np.int64)
                sha = write_shard(staging / "shards" / name, images, labels)
                shard_info[split].append({"file": f"shards/{name}", "count": len(chunk), "sha256": sha})
                for i, r in enumerate(chunk):
                    manifest.append({**r, "label": label_of[r["category"]], "shard": name, "index": i})
        counts = {s: sum(sh["count"] for sh in shard_info[s]) for s in SPLITS}
        content = {
            "classes": classes,
            "resolution": res,
            "mode": cfg.mode,
            "shards": {s: [sh["sha256"] for sh in shard_info[s]] for s in SPLITS},
        }
        content_hash = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        train_rows = [r for r in manifest if r["split"] == "train"]
        preview_idx = np.array([r["_row"] for r in train_rows[:20000]], dtype=np.int64)
        preview_labels = np.array([r["label"] for r in train_rows[:20000]], dtype=np.int64)
        if len(preview_idx):
            save_png(_preview(pixels[preview_idx], preview_labels, classes), staging / "preview.png")
        del pixels
        spill_path.unlink()

        atomic.write_csv(staging / "manifest.csv", MANIFEST_COLUMNS, manifest)
        atomic.write_csv(staging / "rejected.csv", REJECTED_COLUMNS, rejected)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": {"kind": cfg.source, "input": cfg.input, "description": listing.description},
            "resolution": res,
            "mode": cfg.mode,
            "channels": channels,
            "background": 0 if cfg.source == "builtin" else 255,
            "classes": classes,
            "counts": counts,
            "n_rejected": len(rejected),
            "ignored_files": listing.ignored[:1000],
            "n_ignored": len(listing.ignored),
            "split_seed": cfg.seed,
            "split_method": "content-hash",
            "split_targets": split_targets(cfg),
            "split_fractions": split_fractions(rows, drawn_only=cfg.source == "builtin" and cfg.official_test_split),
            "shards": shard_info,
            "content_hash": content_hash,
        }
        atomic.write_json(staging / "dataset.json", meta)
        atomic.replace_dir(staging, out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if err.filename is None:  # a buffered write's ENOSPC names no file: name the output folder
            raise OSError(err.errno, err.strerror, str(out)) from None
        raise
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        if "No space left" in str(err):  # safetensors' writer reports ENOSPC as its own exception type
            raise OSError(28, "No space left on device", str(out)) from None
        raise
    return PrepareResult(
        out=out,
        counts=counts,
        n_rejected=len(rejected),
        n_ignored=len(listing.ignored),
        classes=classes,
        content_hash=content_hash,
    )
