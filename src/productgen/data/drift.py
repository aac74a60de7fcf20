"""The drift report: this week's prepared data against the champion's training snapshot.

What a shop needs to know before trusting a retrain: how many images each category has now and had then, which
categories are new or gone, how far each category's images moved (FID between the old and the new real images
of the category, KID where a side is small; TF-Inception features, cached per dataset version and category),
and how much of the new data repeats itself or last week's. Thresholds in ``retrain.drift`` can stop the flow
before training; by default the report only informs. Writes ``drift.json``, ``drift.md`` and ``drift.html``.
"""

from __future__ import annotations

import csv
import html
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from productgen.common import atomic
from productgen.config import DriftConfig

SPLITS = ("train", "val", "test")


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _category_images(ds: Any, category: str, limit: int, seed: int) -> torch.Tensor:
    """All of a category's prepared images (every split), or a seeded subset of ``limit``."""
    label = ds.classes.index(category)
    parts = []
    for split in SPLITS:
        if ds.counts.get(split):
            x, y = ds.tensors(split)
            parts.append(x[y == label])
    images = (
        torch.cat(parts) if parts else torch.zeros((0, ds.channels, ds.resolution, ds.resolution), dtype=torch.uint8)
    )
    if len(images) > limit:
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        images = images[pick]
    return images


def _features(ds: Any, category: str, cfg: DriftConfig, extractor: Any, show_progress: bool) -> Any:
    """Features of a category's (subset of) images, cached by dataset version, category, size and network."""
    import numpy as np

    from productgen.metrics import FeatureStats, StatsCache, cache_key, compute_features

    images = _category_images(ds, category, cfg.max_per_category, seed=0)
    cache = StatsCache()
    key = cache_key(ds.content_hash, f"drift-{category}-{len(images)}", extractor.name, extractor.sha)
    hit = cache.load(key, need_features=True)
    if hit is not None and hit.features is not None:
        return hit.features
    if len(images) < 2:
        return np.zeros((len(images), 2048), dtype=np.float32)
    feats = compute_features(images, extractor, batch_size=100, show_progress=show_progress)
    cache.save(key, FeatureStats.from_features(feats, keep_features=True), {"category": category, "kind": "drift"})
    return feats


def drift_report(
    new: Path,
    old: Path | None,
    cfg: DriftConfig,
    out: Path,
    show_progress: bool = False,
    old_label: str = "champion's training data",
) -> dict[str, Any]:
    """Compare the prepared dataset ``new`` with ``old`` (None: no earlier snapshot); write and return the report."""
    from productgen.data.dataset import PreparedDataset

    new_ds = PreparedDataset(new)
    new_rows = _manifest(new_ds.root)
    new_counts = Counter(r["category"] for r in new_rows)
    hashes = Counter(r["sha256"] for r in new_rows)
    report: dict[str, Any] = {
        "new": {"path": str(new), "content_hash": new_ds.content_hash, "images": len(new_rows)},
        "old": None,
        "old_label": old_label,
        "duplicate_share": sum(n - 1 for n in hashes.values()) / max(1, len(new_rows)),
        "categories": {},
        "new_categories": [],
        "removed_categories": [],
        "alerts": [],
    }
    old_ds = PreparedDataset(old) if old is not None else None
    old_counts: Counter[str] = Counter()
    if old_ds is not None:
        old_rows = _manifest(old_ds.root)
        old_counts = Counter(r["category"] for r in old_rows)
        old_hashes = {r["sha256"] for r in old_rows}
        report["old"] = {"path": str(old), "content_hash": old_ds.content_hash, "images": len(old_rows)}
        report["seen_before_share"] = sum(h in old_hashes for h in hashes.elements()) / max(1, len(new_rows))
        report["new_categories"] = sorted(set(new_counts) - set(old_counts))
        report["removed_categories"] = sorted(set(old_counts) - set(new_counts))
    extractor = None
    if old_ds is not None and cfg.enabled:
        from productgen.metrics import load_extractor

        extractor = load_extractor(cfg.extractor, cfg.device)
    for cat in sorted(set(new_counts) | set(old_counts)):
        entry: dict[str, Any] = {"new": new_counts.get(cat, 0), "old": old_counts.get(cat, 0) if old_ds else None}
        if extractor is not None and old_ds is not None and entry["new"] and entry["old"]:
            a = _features(old_ds, cat, cfg, extractor, show_progress)
            b = _features(new_ds, cat, cfg, extractor, show_progress)
            entry["n_compared"] = [len(a), len(b)]
            if min(len(a), len(b)) >= cfg.min_fid_images:
                from productgen.metrics import FeatureStats
                from productgen.metrics.frechet import fid_from_stats

                entry["fid"] = fid_from_stats(FeatureStats.from_features(a), FeatureStats.from_features(b))
            elif min(len(a), len(b)) >= 2:
                from productgen.metrics.kid import kid_from_features

                entry["kid"] = kid_from_features(a, b, subset_size=min(len(a), len(b))).mean
        report["categories"][cat] = entry
    _alerts(report, cfg)
    report["stop"] = bool(report["alerts"])
    if extractor is not None:
        report["extractor"] = {"name": extractor.name, "sha": extractor.sha}
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "drift.json", report)
    md = markdown(report)
    atomic.write_text(out / "drift.md", md)
    atomic.write_text(out / "drift.html", _html(report))
    return report


def _alerts(report: dict[str, Any], cfg: DriftConfig) -> None:
    for cat, e in report["categories"].items():
        if cfg.max_fid is not None and e.get("fid", 0.0) > cfg.max_fid:
            report["alerts"].append(
                f"{cat}: FID {e['fid']:.1f} between old and new images > drift.max_fid {cfg.max_fid:g}"
            )
        if cfg.max_kid is not None and e.get("kid", 0.0) > cfg.max_kid:
            report["alerts"].append(f"{cat}: KID {e['kid']:.4f} > drift.max_kid {cfg.max_kid:g}")
    removed = report["removed_categories"]
    if cfg.max_removed_categories is not None and len(removed) > cfg.max_removed_categories:
        report["alerts"].append(
            f"{len(removed)} categories removed ({', '.join(removed)}) > "
            f"drift.max_removed_categories {cfg.max_removed_categories}"
        )


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for cat, e in report["categories"].items():
        shift = f"FID {e['fid']:.1f}" if "fid" in e else f"KID {e['kid']:.4f}" if "kid" in e else "-"
        status = "new" if cat in report["new_categories"] else "removed" if cat in report["removed_categories"] else ""
        rows.append([cat, "-" if e["old"] is None else f"{e['old']:,}", f"{e['new']:,}", shift, status])
    return rows


def one_line(report: dict[str, Any]) -> str:
    parts = [f"{report['new']['images']:,} images"]
    if report["old"]:
        parts.append(f"vs {report['old']['images']:,} in the {report['old_label']}")
    if report["new_categories"]:
        parts.append(f"new categories: {', '.join(report['new_categories'])}")
    if report["removed_categories"]:
        parts.append(f"removed: {', '.join(report['removed_categories'])}")
    parts.append(f"duplicates {report['duplicate_share']:.1%}")
    if report["alerts"]:
        parts.append("ALERT: " + "; ".join(report["alerts"]))
    return "drift: " + ", ".join(parts)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Data drift",
        "",
        f"**{one_line(report)}**",
        "",
        f"- New: `{report['new']['path']}` (content hash `{report['new']['content_hash'][:16]}`)",
    ]
    if report["old"]:
        lines.append(
            f"- Old ({report['old_label']}): `{report['old']['path']}` "
            f"(content hash `{report['old']['content_hash'][:16]}`)"
        )
        lines.append(f"- New images already in the old data: {report['seen_before_share']:.1%}")
    else:
        lines.append("- No earlier snapshot to compare with (first run of this model).")
    lines += [
        f"- Duplicate share in the new data: {report['duplicate_share']:.1%}",
        "",
        "| category | images before | images now | shift (old vs new real images) | |",
        "|---|---:|---:|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(report)]
    if report.get("extractor"):
        lines += ["", f"Features: {report['extractor']['name']}; FID where both sides have enough images, else KID."]
    return "\n".join(lines) + "\n"


def _html(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("category", "images before", "images now", "shift", ""))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in _rows(report))
    return (
        f"<!doctype html><meta charset='utf-8'><title>Data drift</title><h1>Data drift</h1>"
        f"<p><b>{html.escape(one_line(report))}</b></p><table border='1' cellpadding='4'>"
        f"<tr>{head}</tr>{body}</table>"
    )
