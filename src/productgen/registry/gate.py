"""The promotion gate: a decision on a challenger and the champion scored on the same set, in the same run.

Why a pure function over two fresh evaluations: a weekly retrain on a catalog that changes can only be judged
fairly by scoring the production model again on this week's evaluation set, with this week's code (TFX's
Evaluator with a baseline model; MLflow's ``validate_evaluation_results``). Metrics stored by earlier weeks are
history, not evidence. The rules, in order:

1. The challenger must clear its task's absolute bar (``registry.<key>_<min|max>``: a restorer must beat the
   degraded input by ``gain_db_min`` dB, a generator's FID must stay under ``fid_max``, ...), even when there is
   no champion yet.
2. It must beat the champion on the task's primary metric by more than the margin (``registry.<metric>_margin``).
3. No category may get worse than the champion's by more than ``registry.category_<metric>_margin`` (fairness
   across product categories): the decision names the categories that did. Categories new this week (absent from
   the champion's training data) are judged by the absolute bar alone; categories that disappeared are named.

:func:`decide` takes plain metrics dicts (what the task's evaluator returns), so the retrain flow, ``productgen
registry promote`` and the web page's promote button all decide the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from productgen.config import RegistryConfig
from productgen.tasks import TaskSpec, get


@dataclass(frozen=True)
class Scored:
    """One model's evaluation for the gate: its metrics on ``eval_set``, and the categories it was trained on."""

    version: str | None
    metrics: dict[str, Any]
    eval_set: str
    trained_on: list[str] | None = None  # None: unknown (then every category counts as known)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


def margin_for(spec: TaskSpec, cfg: RegistryConfig) -> float:
    return float(getattr(cfg, f"{spec.metric}_margin", 0.0))


def category_margin(key: str, cfg: RegistryConfig) -> float:
    return float(getattr(cfg, f"category_{key}_margin", 0.0))


def absolute_bar(spec: TaskSpec, cfg: RegistryConfig) -> tuple[str, str, float] | None:
    """``(metrics key, "min" | "max", value)`` of the task's absolute bar, or None when it is switched off."""
    key, bound = spec.absolute
    value = getattr(cfg, f"{key}_{bound}", None)
    return None if value is None else (key, bound, float(value))


def _passes(value: float | None, bound: str, limit: float) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return value >= limit if bound == "min" else value <= limit


def _category_key(spec: TaskSpec, a: dict[str, Any], b: dict[str, Any] | None = None) -> str | None:
    """The per-category figure compared: the primary metric, or KID for categories too small for FID."""
    for key in (spec.metric, "kid"):
        if key in a and (b is None or key in b):
            return key
    return None


def decide(
    task: str, challenger: Scored, champion: Scored | None, cfg: RegistryConfig, margin: float | None = None
) -> Verdict:
    """Promote ``challenger`` over ``champion`` (None: there is none yet)? See the module docstring."""
    spec = get(task)
    metric = spec.metric
    margin = margin_for(spec, cfg) if margin is None else margin
    value = challenger.metrics.get(metric)
    per_cat: dict[str, dict[str, Any]] = challenger.metrics.get("per_category") or {}
    evidence: dict[str, Any] = {
        "metric": metric,
        "better": spec.direction,
        "margin": margin,
        "eval_set": challenger.eval_set,
        "challenger": {"version": challenger.version, metric: value, "per_category": _primary(spec, per_cat)},
    }
    # The evidence first, whichever rule refuses: the champion's score on the same set and the categories new and
    # removed this week are recorded with every refusal (the absolute bar's too), never only when it got that far.
    champ_value = None
    new: list[str] = sorted(per_cat) if champion is None else []
    removed: list[str] = []
    champ_cat: dict[str, dict[str, Any]] = {}
    if champion is not None:
        champ_value = champion.metrics.get(metric)
        champ_cat = champion.metrics.get("per_category") or {}
        evidence["champion"] = {
            "version": champion.version,
            metric: champ_value,
            "eval_set": champion.eval_set,
            "per_category": _primary(spec, champ_cat),
        }
        known = set(champion.trained_on) if champion.trained_on is not None else set(per_cat) | set(champ_cat)
        new = sorted(set(per_cat) - known)
        removed = sorted(known - set(per_cat)) if champion.trained_on is not None else []
    evidence["categories"] = {"new": new, "new_failing": [], "worse": [], "removed": removed}
    notes = (
        "".join(
            [
                f"; new categories judged by the absolute bar: {', '.join(new)}" if new else "",
                f"; categories no longer in the data: {', '.join(removed)}" if removed else "",
            ]
        )
        if champion is not None
        else ""
    )
    same_set = champion is not None and champion.eval_set == challenger.eval_set and champ_value is not None
    vs = f" (champion v{champion.version} on the same set: {metric} {_fmt(champ_value)})" if same_set else ""

    def refuse(rule: str, reason: str) -> Verdict:
        evidence["refused_by"] = rule
        return Verdict(False, reason, evidence)

    if value is None or not math.isfinite(float(value)):
        return refuse("no_metric", f"challenger has no finite {metric} evaluation{vs}{notes}")
    bar = absolute_bar(spec, cfg)
    if bar is not None:
        key, bound, limit = bar
        got = challenger.metrics.get(key)
        evidence["absolute"] = {"key": key, "bound": bound, "limit": limit, "value": got}
        if not _passes(got, bound, limit):
            return refuse(
                "absolute",
                f"{key} {_fmt(got)} fails the absolute bar ({bound} {limit:g}; registry.{key}_{bound}){vs}{notes}",
            )
    if champion is None:
        # The first champion is judged on the whole set only: per-category figures of a first week's small set
        # (FID on 30 images a category) are too biased to hold against the overall bar.
        passed = f", {bar[0]} {_fmt(challenger.metrics.get(bar[0]))} clears {bar[1]} {bar[2]:g}" if bar else ""
        return Verdict(True, f"no champion yet{passed}", evidence)
    if not same_set:
        return refuse(
            "eval_set",
            f"champion {champion.version} was scored on another set ({champion.eval_set}) than the "
            f"challenger ({challenger.eval_set}); score both in the same run",
        )
    gain = spec.better(float(value), float(champ_value))
    evidence["gain"] = gain
    worse: list[str] = []
    for cat in sorted(set(per_cat) & set(champ_cat) - set(new)):
        key = _category_key(spec, per_cat[cat], champ_cat[cat])
        if key is None:
            continue
        delta = (
            spec.better(float(per_cat[cat][key]), float(champ_cat[cat][key]))
            if key == metric
            else (float(champ_cat[cat][key]) - float(per_cat[cat][key]))
        )  # KID: lower is better
        if delta < -category_margin(key, cfg):
            worse.append(f"{cat} ({key} {_fmt(per_cat[cat][key])} vs {_fmt(champ_cat[cat][key])})")
    failing = _failing_new(spec, cfg, per_cat, new)
    evidence["categories"] = {"new": new, "new_failing": failing, "worse": worse, "removed": removed}
    head = (
        f"{metric} {_fmt(value)} vs champion {_fmt(champ_value)}: "
        f"{'better' if gain > 0 else 'not better'} by {abs(gain):.4g} (margin {margin:g})"
    )
    if gain <= margin:
        return refuse("margin", head + notes)
    if worse:
        return refuse("category", f"{head}, but worse in {', '.join(worse)} (registry.category_*_margin){notes}")
    if failing:
        return refuse("new_category", f"{head}, but new categories fail the absolute bar: {', '.join(failing)}{notes}")
    return Verdict(True, head + notes, evidence)


def _failing_new(spec: TaskSpec, cfg: RegistryConfig, per_cat: dict[str, dict[str, Any]], new: list[str]) -> list[str]:
    """New categories whose own figure fails the task's absolute bar (where the breakdown has that figure)."""
    bar = absolute_bar(spec, cfg)
    if bar is None:
        return []
    key, bound, limit = bar
    return [c for c in new if key in per_cat.get(c, {}) and not _passes(per_cat[c][key], bound, limit)]


def _primary(spec: TaskSpec, per_cat: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cat, vals in per_cat.items():
        key = _category_key(spec, vals)
        if key is not None:
            out[cat] = {key: vals[key], "n": vals.get("n")}
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)
