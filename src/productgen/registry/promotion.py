"""The model registry: one registered model per task, aliases ``champion`` and ``challenger``, and promotion
through the gate (:mod:`productgen.registry.gate`).

Why the gate's evidence is stored: a scheduled retraining must never replace a good model with a worse one, and
whoever asks later must see why a version was or was not promoted. The retrain flow scores the challenger and
the champion on this week's evaluation set in one run and hands the verdict here; the decision, both scores, the
set's id and the lineage of the version (data md5, code commit, params hash) are tags on the model version, so
the registry itself is the audit trail (``productgen registry history`` / ``lineage``).

Why a lock: two promotions racing (two flows finishing together) must leave exactly one champion and a
history where each promotion names the champion it really replaced. The read-compare-write is done under an
exclusive file lock next to the store (per tracking URI), and the alias is re-read after it is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from productgen.common.errors import UserError

CHAMPION, CHALLENGER = "champion", "challenger"
LINEAGE_PREFIX = "lineage."
GATE_TAG = "gate.verdict"


def primary_metric(task: str) -> tuple[str, str]:
    """``(metric, "lower" | "higher")``: what the gate compares for ``task`` (its task-registry entry)."""
    from productgen.tasks import get

    spec = get(task)
    return spec.metric, spec.direction


def margin_for(task: str, cfg: Any) -> float:
    """The configured margin (``registry.<metric>_margin``) a challenger must beat the champion by."""
    metric, _ = primary_metric(task)
    return float(getattr(cfg, f"{metric}_margin", 0.0))


@dataclass(frozen=True)
class Decision:
    task: str
    model: str
    version: str
    promoted: bool
    reason: str
    champion_before: str | None
    champion_after: str | None
    evidence: dict[str, Any]


def model_name(task: str, prefix: str = "productgen") -> str:
    primary_metric(task)  # a one-line error for an unknown task
    return f"{prefix}-{task}"


def registered_name(task: str, name: str | None = None) -> str:
    """The registered model a task's versions go to: ``productgen-<task>``, or ``name`` for a second model of the
    same task (a 2x upscaler beside a denoiser), which then has its own champion, challenger and history."""
    default = model_name(task)
    if name is None:
        return default
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name):
        raise UserError(f"model name {name!r}: use letters, digits, '_', '.' and '-' (e.g. productgen-restore-sr2)")
    return name


def eval_set_id(metrics: dict[str, Any], content_hash: str, split: str) -> str:
    """What makes two evaluations comparable: the same data, split, categories, sizes and feature network."""
    ext = metrics.get("extractor", {}).get("sha", "?") if isinstance(metrics.get("extractor"), dict) else "-"
    size = metrics.get("n_real", metrics.get("images", metrics.get("n_images")))
    other = metrics.get("n_fake", metrics.get("view", metrics.get("style", "")))
    cats = metrics.get("categories")
    subset = ":" + hashlib.sha256(json.dumps(sorted(cats)).encode()).hexdigest()[:8] if cats else ""
    return f"{content_hash[:16]}:{split}:{size}:{other}:{str(ext)[:12]}{subset}"


def _client() -> Any:
    import mlflow
    from mlflow import MlflowClient

    from productgen.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


LOCK_URL_ENV = "PRODUCTGEN_PROMOTION_LOCK_URL"


@contextlib.contextmanager
def _advisory_lock(url: str, uri: str, timeout_s: float) -> Iterator[None]:
    """A PostgreSQL session advisory lock: serialises promotions from any number of machines."""
    import sqlalchemy as sa

    key = int.from_bytes(hashlib.sha256(f"productgen-promotion|{uri}".encode()).digest()[:8], "big", signed=True)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + timeout_s
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() > deadline:
                    raise UserError(f"{LOCK_URL_ENV}: another promotion holds the lock for over {timeout_s:.0f} s")
                time.sleep(0.1)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    except sa.exc.OperationalError as err:
        raise UserError(f"{LOCK_URL_ENV}: cannot reach the lock database ({str(err).splitlines()[0]})") from None
    finally:
        engine.dispose()


@contextlib.contextmanager
def promotion_lock(timeout_s: float = 120.0) -> Iterator[None]:
    """Exclusive lock per tracking store.

    With ``PRODUCTGEN_PROMOTION_LOCK_URL`` (a PostgreSQL URL, e.g. the team database) it is an advisory lock in
    that database, which holds across machines; otherwise a file lock (beside the SQLite db, or per server URI in
    the user cache), which holds on one machine only.
    """
    import os

    from productgen.tracking.runs import tracking_uri

    uri = tracking_uri()
    lock_url = os.environ.get(LOCK_URL_ENV)
    if lock_url:
        with _advisory_lock(lock_url, uri, timeout_s):
            yield
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :]).with_suffix(".promotion.lock")
    else:
        key = hashlib.sha256(uri.encode()).hexdigest()[:16]
        path = Path.home() / ".cache" / "productgen" / "locks" / f"promotion-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"{path}: another promotion holds the lock for over {timeout_s:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register_challenger(
    task: str,
    model_uri: str,
    metrics: dict[str, Any],
    content_hash: str,
    split: str,
    run_id: str | None = None,
    name: str | None = None,
    lineage: dict[str, str] | None = None,
) -> str:
    """Register ``model_uri`` as a new version with its evaluation and lineage as tags; point ``challenger`` at it."""
    import mlflow

    client = _client()
    name = registered_name(task, name)
    metric, _ = primary_metric(task)
    if metric not in metrics:
        raise UserError(f"evaluation has no {metric!r}; evaluate the model before registering it")
    mv = mlflow.register_model(model_uri, name, tags={"task": task})
    version = str(mv.version)
    tags = {f"eval.{k}": str(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tags |= {"eval.set": eval_set_id(metrics, content_hash, split), "eval.primary_metric": metric}
    if metrics.get("per_category"):
        tags["eval.per_category"] = json.dumps(metrics["per_category"])[:4900]
    if run_id:
        tags["eval.run_id"] = run_id
    tags |= {f"{LINEAGE_PREFIX}{k}": str(v)[:4900] for k, v in (lineage or {}).items()}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def stored_scored(client: Any, name: str, version: str) -> Any:
    """A version's stored evaluation as the gate's :class:`~productgen.registry.gate.Scored` (history: valid evidence
    only against another version scored on the very same set)."""
    from productgen.registry.gate import Scored

    tags = client.get_model_version(name, version).tags
    metrics: dict[str, Any] = {}
    for k, v in tags.items():
        if k.startswith("eval.") and k not in ("eval.set", "eval.per_category", "eval.primary_metric", "eval.run_id"):
            with contextlib.suppress(ValueError):
                metrics[k[len("eval.") :]] = float(v)
    with contextlib.suppress(ValueError, TypeError):
        metrics["per_category"] = json.loads(tags.get("eval.per_category") or "{}")
    trained_on = None
    with contextlib.suppress(ValueError, TypeError):
        trained_on = json.loads(tags[f"{LINEAGE_PREFIX}categories"]) if f"{LINEAGE_PREFIX}categories" in tags else None
    return Scored(version, metrics, tags.get("eval.set", "?"), trained_on)


def promote(
    task: str,
    version: str | None = None,
    margin: float | None = None,
    force: bool = False,
    name: str | None = None,
    verdict: Any = None,
    cfg: Any = None,
    approval: dict[str, Any] | None = None,
) -> Decision:
    """Make ``version`` (default: the challenger) champion if the gate lets it through.

    ``verdict``: the gate's decision from scoring the version and the champion in the same run (the retrain flow,
    ``registry promote --rescore``); it counts only if the champion it was scored against is still champion.
    Without one, the version's stored verdict against the current champion is used, else both versions' stored
    evaluations when they were scored on the very same set; anything else is refused with what to run.
    ``cfg``: the ``registry:`` settings (margins, per-category margins, absolute bars; default: built-in).
    ``approval``: the person's answer (:mod:`productgen.registry.approval`), stored with the decision. A version
    that waits for approval, or that a person rejected, is refused here without one (``force`` overrides).
    """
    from productgen.config import RegistryConfig
    from productgen.registry import gate

    cfg = cfg or RegistryConfig()
    client = _client()
    name = registered_name(task, name)
    with promotion_lock():
        version = version or alias_version(client, name, CHALLENGER)
        if version is None:
            raise UserError(f"{name}: no challenger to promote; register one (or pass --version)")
        mv = _version_or_error(client, name, version)
        other = mv.tags.get("task")
        if other not in (None, task):
            raise UserError(f"{name} v{version} is a {other} model, not {task}; name the task it was registered for")
        before = alias_version(client, name, CHAMPION)
        asked = mv.tags.get("approval.state")
        if before == version:
            v = gate.Verdict(False, f"version {version} is already champion", {})
        elif force:
            v = gate.Verdict(True, "forced by the user", {})
        elif asked in ("waiting", "rejected", "timed_out") and approval is None:
            hint = (
                f"answer with: productgen registry approve {task} --version {version}"
                if asked == "waiting"
                else "--force overrides"
            )
            raise UserError(f"{name} v{version}: approval {asked.replace('_', ' ')} ({hint})")
        elif verdict is not None:
            v = _current(verdict, before, task, version)
        else:
            v = _stored_verdict(client, task, name, version, before, margin, cfg)
        promoted = v.promote
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
            if before is not None:
                client.set_model_version_tag(name, before, "promotion.replaced_by", version)
        after = alias_version(client, name, CHAMPION)
        if promoted and after != version:
            raise RuntimeError(f"{name}: champion alias is {after} right after setting it to {version}")
        record = {
            "time": stamp,
            "promoted": promoted,
            "reason": v.reason,
            "champion_before": before,
            "champion_after": after,
            "evidence": v.evidence,
            **({"approval": approval} if approval else {}),
        }
        client.set_model_version_tag(name, version, "promotion.decision", "promoted" if promoted else "rejected")
        client.set_model_version_tag(name, version, "promotion.record", json.dumps(record)[:4900])
        _append_history(client, name, {"action": "promote", "version": version, **record})
    return Decision(task, name, version, promoted, v.reason, before, after, v.evidence)


def _stored_verdict(
    client: Any, task: str, name: str, version: str, champion: str | None, margin: float | None, cfg: Any
) -> Any:
    """The gate on stored evidence: the verdict the retrain flow recorded against this very champion, or both
    versions' stored evaluations when they were scored on the same set (same data, split, sizes, network)."""
    from productgen.registry import gate

    tags = client.get_model_version(name, version).tags
    if GATE_TAG in tags:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            stored = json.loads(tags[GATE_TAG])
            v = gate.Verdict(bool(stored["promote"]), stored["reason"], stored.get("evidence", {}))
            scored_against = (v.evidence.get("champion") or {}).get("version")
            if scored_against == champion or not v.promote:
                return _current(v, champion, task, version)
    challenger = stored_scored(client, name, version)
    champ = stored_scored(client, name, champion) if champion is not None else None
    v = gate.decide(task, challenger, champ, cfg, margin)
    if champ is not None and champ.eval_set != challenger.eval_set:
        return gate.Verdict(
            False,
            f"{v.reason}; score both on this week's data "
            f"(productgen registry promote {task} --version {version} --rescore)",
            v.evidence,
        )
    return v


def _current(verdict: Any, champion: str | None, task: str, version: str) -> Any:
    """``verdict`` as it stands now that ``champion`` is champion.

    A refusal stands whoever is champion now: its own reason is kept (the absolute bar, the margin, a category),
    with a note when the champion has moved since. Only a verdict to promote needs the champion it was scored
    against still in place; otherwise it is refused with what to run."""
    from productgen.registry import gate

    scored_against = (verdict.evidence.get("champion") or {}).get("version")
    if scored_against == champion:
        return verdict
    if not verdict.promote:
        moved = f"champion v{scored_against}" if scored_against else "no champion"
        return gate.Verdict(
            False, f"{verdict.reason} (judged against {moved}; the champion is now v{champion})", verdict.evidence
        )
    return gate.Verdict(
        False,
        f"scored against champion {scored_against}, but the champion is now {champion}; score again "
        f"(productgen registry promote {task} --version {version} --rescore)",
        verdict.evidence,
    )


def earlier_decision(task: str, key: str, champion: str | None, name: str | None = None) -> tuple[str, str] | None:
    """``(version, its decision)`` of the newest version trained from the same run ``key`` (data, code, params)
    that was already judged against ``champion`` (None: no champion): refused by the gate, rejected by a person, or
    still waiting for approval. Training it again would register a copy of it; the retrain flow skips instead.
    A version whose approval timed out was never judged by a person: it does not count (the next run asks again)."""
    client = _client()
    model = registered_name(task, name)
    if not key or not _exists(client, model):
        return None
    versions = client.search_model_versions(f"name='{model}'")
    for mv in sorted(versions, key=lambda m: -int(m.version)):
        tags = mv.tags
        if tags.get(f"{LINEAGE_PREFIX}key") != key:
            continue
        try:
            verdict = json.loads(tags[GATE_TAG])
        except (KeyError, ValueError, TypeError):
            continue
        against = ((verdict.get("evidence") or {}).get("champion") or {}).get("version")
        if against != champion:
            continue
        state = tags.get("approval.state")
        if state == "waiting":
            return str(mv.version), f"waiting for approval until {tags.get('approval.deadline')}"
        if state == "rejected":
            return str(mv.version), (
                f"rejected by {tags.get('approval.by')} at {tags.get('approval.at')}: {tags.get('approval.reason')}"
            )
        if not verdict.get("promote"):
            return str(mv.version), f"rejected by the gate: {verdict.get('reason')}"
    return None


def resolve_version(task: str, version: str | None = None, name: str | None = None) -> str:
    """``version`` checked to exist, or the challenger's version."""
    client = _client()
    model = registered_name(task, name)
    version = version or alias_version(client, model, CHALLENGER)
    if version is None:
        raise UserError(f"{model}: no challenger; pass --version")
    _version_or_error(client, model, version)
    return version


def tag_version(task: str, version: str, key: str, value: str, name: str | None = None) -> None:
    _client().set_model_version_tag(registered_name(task, name), version, key, value[:4900])


def record_verdict(task: str, version: str, verdict: Any, name: str | None = None) -> None:
    """Store the gate's verdict (both scores, the set, per category) on the version, for a later promote."""
    client = _client()
    payload = {"promote": verdict.promote, "reason": verdict.reason, "evidence": verdict.evidence}
    client.set_model_version_tag(registered_name(task, name), version, GATE_TAG, json.dumps(payload)[:4900])


def _version_or_error(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException:
        raise UserError(
            f"{name}: no version {version!r}; list them with 'productgen registry history' "
            "or 'productgen registry lineage'"
        ) from None


def lineage_of(task: str, version: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The lineage tags of a version (default: the champion), without the prefix, plus version and alias info."""
    client = _client()
    name = registered_name(task, name)
    if version is None:
        version = alias_version(client, name, CHAMPION)
        if version is None:
            raise UserError(
                f"{name}: no champion yet; pass --version N (or train one with flows/retrain.py --task {task})"
            )
    mv = _version_or_error(client, name, version)
    tags = mv.tags
    out: dict[str, Any] = {k[len(LINEAGE_PREFIX) :]: v for k, v in tags.items() if k.startswith(LINEAGE_PREFIX)}
    return {"model": name, "version": str(version), "run_id": mv.run_id, "eval_set": tags.get("eval.set"), **out}


def rollback(task: str, to_version: str | None = None, name: str | None = None) -> Decision:
    """Point ``champion`` back at ``to_version`` (default: the champion before the current one)."""
    client = _client()
    name = registered_name(task, name)
    with promotion_lock():
        current = alias_version(client, name, CHAMPION)
        if to_version is None:
            previous = [
                e["champion_before"]
                for e in history(task, name)
                if e.get("champion_after") == current and e.get("champion_before") and e["champion_before"] != current
            ]
            if not previous:
                raise UserError(f"{name}: no earlier champion to roll back to; pass --to VERSION")
            to_version = previous[-1]
        _version_or_error(client, name, to_version)
        client.set_registered_model_alias(name, CHAMPION, to_version)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {
            "time": stamp,
            "promoted": True,
            "reason": "rollback",
            "champion_before": current,
            "champion_after": to_version,
            "evidence": {},
        }
        _append_history(client, name, {"action": "rollback", "version": to_version, **record})
    return Decision(task, name, to_version, True, "rollback", current, to_version, {})


HISTORY_TAG = "promotion.history."


def _append_history(client: Any, name: str, event: dict[str, Any]) -> None:
    """Each event is its own registered-model tag (numbered under the lock), so none is ever overwritten."""
    tags = client.get_registered_model(name).tags
    n = 1 + max((int(k[len(HISTORY_TAG) :]) for k in tags if k.startswith(HISTORY_TAG)), default=0)
    client.set_registered_model_tag(name, f"{HISTORY_TAG}{n:06d}", json.dumps(event)[:4900])


def history(task: str, name: str | None = None) -> list[dict[str, Any]]:
    """Promotion, rejection and rollback events, oldest first."""
    from mlflow.exceptions import MlflowException

    client = _client()
    name = registered_name(task, name)
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        raise UserError(f"no registered model {name!r} in {client.tracking_uri}") from None
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_TAG))]


def decision_dict(d: Decision) -> dict[str, Any]:
    return asdict(d)


def ship(task: str, cfg: Any = None, name: str | None = None) -> Decision | None:
    """Register the shipped champion of ``task`` (``champions/<task>``, :mod:`productgen.registry.shipped`) as a new version
    with its card's evaluation and make it champion if the task has none yet (the gate's absolute bar still
    applies). A task that already has a champion keeps it: the shipped model becomes the challenger, to be
    promoted by the gate like any other. None when nothing is shipped for ``task``."""
    from productgen.registry import gate, shipped
    from productgen.tracking.runs import log_trained_model

    folder = shipped.shipped(task)
    if folder is None:
        return None
    card = shipped.read_card(folder)
    metrics = dict(card.get("metrics") or {})
    if primary_metric(task)[0] not in metrics:
        raise UserError(
            f"{folder / shipped.CARD}: has no metrics.{primary_metric(task)[0]}; evaluate the model and "
            "write its card again (docs/quality.md)"
        )
    client = _client()
    model = registered_name(task, name)
    existing = (
        {str(v.version): v.tags for v in client.search_model_versions(f"name='{model}'")}
        if _exists(client, model)
        else {}
    )
    digest = card.get("weights_sha256", "")
    for version, tags in existing.items():  # shipping twice registers nothing new
        if digest and tags.get("shipped.weights_sha256") == digest:
            return Decision(
                task,
                model,
                version,
                False,
                f"already registered as version {version}",
                alias_version(client, model, CHAMPION),
                alias_version(client, model, CHAMPION),
                {},
            )
    import mlflow

    from productgen.tracking.runs import configure

    configure(f"productgen-{task}")
    with mlflow.start_run(run_name=f"ship-{task}", tags={"productgen.registry.shipped": str(folder)}):
        mlflow.log_params({k: str(v)[:500] for k, v in card.items() if not isinstance(v, dict)})
        uri = log_trained_model(folder)
    eval_set = card.get("eval_set") or {}
    version = register_challenger(
        task,
        uri,
        metrics,
        str(eval_set.get("content_hash", "shipped")),
        str(eval_set.get("split", "test")),
        name=name,
        lineage={
            "shipped": str(folder),
            **{k: str(v) for k, v in card.items() if k in ("profile", "steps", "device", "train_time")},
        },
    )
    client.set_model_version_tag(model, version, "shipped.weights_sha256", digest)
    if alias_version(client, model, CHAMPION) is not None:
        return Decision(
            task,
            model,
            version,
            False,
            "registered as challenger: the task already has a champion",
            alias_version(client, model, CHAMPION),
            alias_version(client, model, CHAMPION),
            {},
        )
    scored = gate.Scored(
        version,
        metrics,
        eval_set_id(metrics, str(eval_set.get("content_hash", "shipped")), str(eval_set.get("split", "test"))),
    )
    verdict = gate.decide(task, scored, None, cfg or _registry_defaults())
    return promote(task, version, name=name, verdict=verdict, cfg=cfg)


def _exists(client: Any, model: str) -> bool:
    try:
        client.get_registered_model(model)
    except Exception:  # noqa: BLE001 - MLflow raises RestException/MlflowException for a missing name
        return False
    return True


def _registry_defaults() -> Any:
    from productgen.config import RegistryConfig

    return RegistryConfig()
