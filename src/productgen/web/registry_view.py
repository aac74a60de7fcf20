"""What the Models page shows, read from the registry generically, so new kinds of evidence appear without
changing the page: every model-version tag grouped by prefix (``eval.*`` metrics and evaluation set,
``lineage.*`` data version / code commit / params hash, ``promotion.*`` decision and record), the lineage tags
of the training run (``dvc.*``, ``git.*``, ``dataset.*``), and :func:`productgen.registry.promotion.history`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PREFIXES = ("eval.", "lineage.", "promotion.")
RUN_LINEAGE = ("dataset.", "dvc.", "git.")


@dataclass
class VersionView:
    version: str
    aliases: list[str]
    created: str
    run_id: str | None
    groups: dict[str, list[tuple[str, str]]]  # prefix -> (key without prefix, value)
    run_lineage: list[tuple[str, str]]
    record: dict[str, Any] | None  # promotion.record, parsed


@dataclass
class ModelView:
    name: str
    task: str
    champion: VersionView | None
    challenger: VersionView | None
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def show(value: str) -> str:
    """A tag value for people: numbers to 4 significant digits, per-category JSON as ``name value`` pairs."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return value if value.isdigit() else f"{number:.4g}"
    if value.startswith("{"):
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            return value
        parts = []
        for k, v in data.items():
            if isinstance(v, dict):
                metric = next(((mk, mv) for mk, mv in v.items() if isinstance(mv, (int, float)) and mk != "n"), None)
                v = f"{metric[0]} {metric[1]:.4g}" if metric else json.dumps(v)
            elif isinstance(v, float):
                v = f"{v:.4g}"
            parts.append(f"{k}: {v}")
        return " · ".join(parts)
    return value


def _fmt_time(ms: Any) -> str:
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(int(ms) / 1000))
    except (TypeError, ValueError):
        return ""


def version_view(c: Any, name: str, version: str) -> VersionView:
    mv = c.get_model_version(name, version)
    tags = dict(mv.tags or {})
    groups: dict[str, list[tuple[str, str]]] = {p: [] for p in PREFIXES}
    for key in sorted(tags):
        for p in PREFIXES:
            if key.startswith(p) and key not in ("promotion.record",):
                groups[p].append((key[len(p) :], show(tags[key])))
    record = None
    if "promotion.record" in tags:
        try:
            record = json.loads(tags["promotion.record"])
        except json.JSONDecodeError:
            record = {"reason": tags["promotion.record"]}
    run_lineage: list[tuple[str, str]] = []
    if mv.run_id:
        try:
            run_tags = c.get_run(mv.run_id).data.tags
            run_lineage = sorted((k, show(v)) for k, v in run_tags.items() if k.startswith(RUN_LINEAGE))
        except Exception:  # the run may be deleted; the version's own tags still show
            run_lineage = []
    return VersionView(
        str(mv.version),
        list(mv.aliases or []),
        _fmt_time(mv.creation_timestamp),
        mv.run_id,
        groups,
        run_lineage,
        record,
    )


def models_by_task() -> dict[str, list[ModelView]]:
    """Every task of :data:`TASKS` -> its registered models (usually one, ``productgen-<task>``), newest first."""
    from productgen.registry import promotion as registry
    from productgen.tasks import TASKS
    from productgen.web.champions import CHALLENGER, CHAMPION, client, task_of

    c = client()
    out: dict[str, list[ModelView]] = {t: [] for t in TASKS}
    for rm in c.search_registered_models(max_results=1000):
        aliases = dict(rm.aliases or {})
        task = None
        any_version = aliases.get(CHAMPION) or aliases.get(CHALLENGER)
        if any_version is not None:
            task = task_of(rm.name, dict(c.get_model_version(rm.name, str(any_version)).tags or {}))
        if task is None:
            task = task_of(rm.name, {})
        if task is None:
            continue
        view = ModelView(rm.name, task, None, None)
        try:
            if CHAMPION in aliases:
                view.champion = version_view(c, rm.name, str(aliases[CHAMPION]))
            if CHALLENGER in aliases and aliases[CHALLENGER] != aliases.get(CHAMPION):
                view.challenger = version_view(c, rm.name, str(aliases[CHALLENGER]))
            view.history = list(reversed(registry.history(task, rm.name)))
        except Exception as err:  # one broken model must not take the page down
            view.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        out[task].append(view)
    return out


def sample_png(name: str, version: str, cache: dict[tuple[str, str], bytes | None]) -> bytes | None:
    """The sample grid of a version: its evaluation's ``samples.png``, else the last training sample grid."""
    key = (name, version)
    if key in cache:
        return cache[key]
    import tempfile
    from pathlib import Path

    import mlflow

    from productgen.web.champions import client

    c = client()
    mv = c.get_model_version(name, version)
    candidates: list[tuple[str, str]] = []
    eval_run = (mv.tags or {}).get("eval.run_id")
    if eval_run:
        candidates.append((eval_run, "samples.png"))
    if mv.run_id:
        try:
            grids = sorted(a.path for a in c.list_artifacts(mv.run_id, "samples") if a.path.endswith(".png"))
            if grids:
                candidates.append((mv.run_id, grids[-1]))
        except Exception:
            pass
    data = None
    for run_id, path in candidates:
        try:
            with tempfile.TemporaryDirectory(prefix="productgen-web-sample-") as tmp:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
                data = Path(local).read_bytes()
            break
        except Exception:
            continue
    cache[key] = data
    return data
