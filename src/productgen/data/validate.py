"""``productgen data validate``: Great Expectations 1.x checks on a prepared dataset.

Four tables are validated, each with its own expectation suite and thresholds from ``params.yaml``:

* ``files``      every source file, decoded or not: the share that could not be decoded;
* ``images``     the manifest joined with per-image pixel statistics: schema and types, nulls, source sizes
                 and modes, blank/constant images, duplicate content, known categories, split names;
* ``categories`` images per category: the minimum count and the class-balance bound;
* ``content``    each distinct sha256 with the splits it appears in: leakage between splits.

Every row that fails a per-file expectation is listed with its reason in ``quarantine.csv``; sources are
only read. Great Expectations is imported here and nowhere in the core.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from productgen.common import atomic
from productgen.common.errors import UserError
from productgen.config import DataConfig, ValidationConfig
from productgen.data.dataset import PreparedDataset
from productgen.data.prepare import MANIFEST_COLUMNS, SPLITS

STAT_COLUMNS = ("pixel_mean", "pixel_std", "pixel_min", "pixel_max")
QUARANTINE_COLUMNS = ("source_path", "id", "category", "split", "check", "reason")
INT_TYPES = ["int64", "int32", "int16", "int8", "uint8"]


@dataclass
class CheckResult:
    table: str
    check: str
    column: str | None
    success: bool
    threshold: str
    observed: str
    unexpected_count: int = 0


@dataclass
class ValidationResult:
    success: bool
    out: Path
    checks: list[CheckResult]
    quarantine: list[dict[str, Any]]
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success]

    def one_line(self) -> str:
        n_files = self.counts["files"]
        head = f"{len(self.checks) - len(self.failed)}/{len(self.checks)} checks passed on {n_files:,} files"
        if self.success:
            return f"validation passed: {head}; report: {self.out / 'report.md'}"
        worst = "; ".join(f"{c.check} ({c.observed})" for c in self.failed[:3])
        return f"validation FAILED: {head}; failed: {worst}; report: {self.out / 'report.md'}"


def image_statistics(ds: PreparedDataset) -> dict[str, dict[str, np.ndarray]]:
    """Per-image mean, std, min and max on the 0-255 scale, per split, in manifest order."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        images, _ = ds.arrays(split)
        flat = images.reshape(images.shape[0], int(np.prod(images.shape[1:])))
        stats[split] = {
            "pixel_mean": flat.mean(axis=1, dtype=np.float64),
            "pixel_std": flat.std(axis=1, dtype=np.float64),
            "pixel_min": flat.min(axis=1, initial=255).astype(np.int64),
            "pixel_max": flat.max(axis=1, initial=0).astype(np.int64),
        }
    return stats


def _split_excess(ds: PreparedDataset, category: str, tolerance: float) -> float:
    """How far the category's achieved split shares stray beyond the tolerance (<= 0: within it).

    The tolerance per split is ``max(validation.max_split_deviation, 3 sigma)`` with sigma the binomial standard
    deviation of the share for the category's size: a content-hash split of 20 images cannot hit 10% exactly.
    """
    targets = ds.meta.get("split_targets")
    achieved = ds.meta.get("split_fractions", {}).get(category)
    if not targets or not achieved or not achieved.get("n"):
        return 0.0
    n = float(achieved["n"])
    return max(abs(achieved[s] - t) - max(tolerance, 3 * math.sqrt(t * (1 - t) / n)) for s, t in targets.items())


def _frames(ds: PreparedDataset, known_categories: list[str], split_tolerance: float = 0.05) -> dict[str, Any]:
    import pandas as pd

    manifest = pd.read_csv(
        ds.root / "manifest.csv", dtype={"id": str, "sha256": str, "category": str}, keep_default_na=False
    )
    rejected = pd.read_csv(ds.root / "rejected.csv", dtype=str, keep_default_na=False)
    stats = image_statistics(ds)
    parts = []
    for split in SPLITS:
        rows = manifest[manifest["split"] == split].sort_values("index")
        if len(rows) != ds.counts[split]:
            raise UserError(
                f"{ds.root}/manifest.csv: {len(rows)} {split} rows but dataset.json says {ds.counts[split]}"
            )
        for col in STAT_COLUMNS:
            rows = rows.assign(**{col: stats[split][col]})
        parts.append(rows)
    images = pd.concat(parts, ignore_index=True) if parts else manifest
    files = pd.concat(
        [
            pd.DataFrame(
                {
                    "source_path": images["source_path"],
                    "id": images["id"],
                    "category": images["category"],
                    "decodable": True,
                    "reason": "",
                }
            ),
            pd.DataFrame(
                {
                    "source_path": rejected["source_path"],
                    "id": rejected["id"],
                    "category": rejected["category"],
                    "decodable": False,
                    "reason": rejected["reason"],
                }
            ),
        ],
        ignore_index=True,
    )
    present = images["category"].astype(str).unique().tolist()
    counts = images.groupby("category").size().reindex(sorted(set(known_categories) | set(present)), fill_value=0)
    smallest = max(int(counts.min()), 1) if len(counts) else 1
    categories = pd.DataFrame(
        {
            "category": counts.index.astype(str),
            "count": counts.values.astype(np.int64),
            "imbalance": counts.values / smallest,
        }
    )
    categories["split_excess"] = [_split_excess(ds, str(c), split_tolerance) for c in categories["category"]]
    content = images.groupby("sha256")["split"].nunique().rename("n_splits").reset_index()
    return {"files": files, "images": images, "categories": categories, "content": content, "manifest": manifest}


def _suites(cfg: ValidationConfig, known: list[str]) -> dict[str, list[Any]]:
    import great_expectations.expectations as gxe

    def meta(reason: str, threshold: str) -> dict[str, str]:
        return {"reason": reason, "threshold": threshold}

    columns = [*MANIFEST_COLUMNS, *STAT_COLUMNS]
    images: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=columns, exact_match=True, meta=meta("manifest schema", "columns = " + ", ".join(columns))
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=meta("no images", ">= 1 image")),
    ]
    for col in columns:
        images.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=meta(f"missing {col}", "no nulls")))
    for col in ("width", "height", "label", "index", "pixel_min", "pixel_max"):
        images.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=col, type_list=INT_TYPES, meta=meta(f"{col} is not an integer", "integer")
            )
        )
    images += [
        gxe.ExpectColumnValuesToMatchRegex(
            column="sha256", regex=r"^[0-9a-f]{64}$", meta=meta("malformed sha256", "64 hex digits")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="width",
            min_value=cfg.min_source_size,
            max_value=cfg.max_source_size,
            meta=meta("source width out of range", f"{cfg.min_source_size}..{cfg.max_source_size} px"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="height",
            min_value=cfg.min_source_size,
            max_value=cfg.max_source_size,
            meta=meta("source height out of range", f"{cfg.min_source_size}..{cfg.max_source_size} px"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="mode",
            value_set=cfg.allowed_modes,
            meta=meta("source mode not allowed", ", ".join(cfg.allowed_modes)),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="pixel_std",
            min_value=cfg.min_pixel_std,
            meta=meta("blank or constant image", f"pixel std >= {cfg.min_pixel_std:g}"),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="sha256",
            mostly=1.0 - cfg.max_duplicate_fraction,
            meta=meta(
                "duplicate content (same sha256 as another image)", f"duplicates <= {cfg.max_duplicate_fraction:.1%}"
            ),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="category", value_set=known, meta=meta("unknown category", f"{len(known)} known categories")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=list(SPLITS), meta=meta("unknown split", ", ".join(SPLITS))
        ),
    ]
    files = [
        gxe.ExpectColumnValuesToBeInSet(
            column="decodable",
            value_set=[True],
            mostly=1.0 - cfg.max_rejected_fraction,
            meta=meta("could not be read or decoded", f"rejected files <= {cfg.max_rejected_fraction:.1%}"),
        ),
    ]
    categories = [
        gxe.ExpectColumnValuesToBeBetween(
            column="count",
            min_value=cfg.min_images_per_category,
            meta=meta("too few images in category", f">= {cfg.min_images_per_category} per category"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="imbalance",
            max_value=cfg.max_class_imbalance,
            meta=meta("class imbalance over bound", f"largest/smallest <= {cfg.max_class_imbalance:g}"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="split_excess",
            max_value=0.0,
            meta=meta("split shares off data.split", f"within {cfg.max_split_deviation:g} (or 3 sigma) per split"),
        ),
    ]
    content = [
        gxe.ExpectColumnValuesToBeBetween(
            column="n_splits",
            max_value=1,
            meta=meta("same content in more than one split (leakage)", "each sha256 in one split"),
        ),
    ]
    return {"files": files, "images": images, "categories": categories, "content": content}


INDEX_COLUMNS = {"files": "source_path", "images": "source_path", "categories": "category", "content": "sha256"}


def run_expectations(
    frames: dict[str, Any], cfg: ValidationConfig, known: list[str]
) -> tuple[list[CheckResult], list[dict[str, Any]]]:
    """Validate the four tables with GX; return per-check results and the failing rows with reasons."""
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("productgen")
    checks: list[CheckResult] = []
    failing: list[dict[str, Any]] = []
    images = frames["images"]
    for table, expectations in _suites(cfg, known).items():
        frame = frames[table]
        batch = (
            source.add_dataframe_asset(table)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        suite = gx.ExpectationSuite(name=f"productgen-{table}", expectations=expectations)
        key = INDEX_COLUMNS[table]
        result = batch.validate(
            suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [key]}
        )
        for r in result.results:
            cfg_ = r.expectation_config
            meta = cfg_.meta or {}
            res = r.result or {}
            column = cfg_.kwargs.get("column")
            unexpected = res.get("unexpected_index_list") or []
            if r.exception_info and r.exception_info.get("raised_exception"):
                observed = f"error: {r.exception_info.get('exception_message')}"
            elif "unexpected_count" in res:
                pct = res.get("unexpected_percent") or 0.0
                observed = f"{res['unexpected_count']:,} of {res.get('element_count', 0):,} rows ({pct:.2f}%)"
            else:
                observed = str(res.get("observed_value"))
            checks.append(
                CheckResult(
                    table=table,
                    check=meta.get("reason", cfg_.type),
                    column=column,
                    success=bool(r.success),
                    threshold=meta.get("threshold", ""),
                    observed=observed,
                    unexpected_count=len(unexpected),
                )
            )
            failing += _failing_rows(table, meta.get("reason", cfg_.type), unexpected, frames, images)
    return checks, failing


def _failing_rows(
    table: str, reason: str, unexpected: list[dict[str, Any]], frames: dict[str, Any], images: Any
) -> list[dict[str, Any]]:
    """Expand GX's unexpected rows into quarantine entries naming source files."""
    rows: list[dict[str, Any]] = []
    if table == "files":
        files = frames["files"].set_index("source_path")
        for u in unexpected:
            hit = files.loc[[u["source_path"]]].iloc[0]
            rows.append(
                {
                    "source_path": u["source_path"],
                    "id": hit["id"],
                    "category": hit["category"],
                    "split": "",
                    "check": reason,
                    "reason": hit["reason"] or reason,
                }
            )
    elif table == "images":
        by_path = images.set_index("source_path")
        for u in unexpected:
            hit = by_path.loc[[u["source_path"]]].iloc[0]
            detail = {k: v for k, v in u.items() if k != "source_path"}
            text = reason + (f" ({', '.join(f'{k}={v}' for k, v in detail.items())})" if detail else "")
            rows.append(
                {
                    "source_path": u["source_path"],
                    "id": hit["id"],
                    "category": hit["category"],
                    "split": hit["split"],
                    "check": reason,
                    "reason": text,
                }
            )
    elif table == "content":
        for u in unexpected:
            for _, hit in images[images["sha256"] == u["sha256"]].iterrows():
                rows.append(
                    {
                        "source_path": hit["source_path"],
                        "id": hit["id"],
                        "category": hit["category"],
                        "split": hit["split"],
                        "check": reason,
                        "reason": f"{reason} (sha256 {u['sha256'][:12]})",
                    }
                )
    # Category-level failures name no single file; they appear in the checks table of the report.
    return rows


def validate(prepared: Path, cfg: ValidationConfig, data_cfg: DataConfig | None = None) -> ValidationResult:
    """Validate the prepared dataset at ``prepared``; write the report, summary and quarantine list."""
    from productgen.data.report import write_report

    ds = PreparedDataset(prepared)
    known = list(data_cfg.categories) if data_cfg and data_cfg.categories else ds.classes
    frames = _frames(ds, known, cfg.max_split_deviation)
    checks, failing = run_expectations(frames, cfg, known)
    success = all(c.success for c in checks)
    out = Path(cfg.out)
    images = frames["images"]
    n_files = len(frames["files"])
    n_rejected = int((~frames["files"]["decodable"]).sum())
    n_dup = int(images["sha256"].duplicated().sum())
    counts = {
        "files": n_files,
        "images": len(images),
        "rejected": n_rejected,
        "splits": {s: int(ds.counts[s]) for s in SPLITS},
        "categories": {str(r["category"]): int(r["count"]) for _, r in frames["categories"].iterrows()},
    }
    result = ValidationResult(success=success, out=out, checks=checks, quarantine=failing, counts=counts)
    metrics = {
        "valid": int(success),
        "checks_failed": len(result.failed),
        "files": n_files,
        "images": len(images),
        "rejected_fraction": n_rejected / max(n_files, 1),
        "duplicate_fraction": n_dup / max(len(images), 1),
        "quarantined_files": len({q["source_path"] for q in failing}),
        **{f"images_{s}": int(ds.counts[s]) for s in SPLITS},
    }
    summary = {
        "success": success,
        "dataset": str(prepared),
        "content_hash": ds.content_hash,
        "thresholds": asdict(cfg),
        "counts": counts,
        "metrics": metrics,
        "checks": [asdict(c) for c in checks],
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_csv(out / "quarantine.csv", QUARANTINE_COLUMNS, failing)
    atomic.write_json(out / "summary.json", summary)
    atomic.write_json(out / "metrics.json", metrics)
    write_report(result, ds, summary)
    return result


def load_summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))
