"""The model registry: one registered model per task, aliases ``champion`` and ``challenger``, and a promotion
gate that compares the challenger with the champion on the task's primary metric.

Why a gate: a scheduled retraining must never replace a good model with a worse one. A challenger becomes
champion only if it beats the champion by a configured margin, on the same evaluation set (same dataset
content hash, split, image counts and feature network); the decision and its evidence are stored as tags on
the model version, so the registry itself is the audit trail (``productgen registry history``).

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

from productgen.errors import UserError

CHAMPION, CHALLENGER = "champion", "challenger"
# task -> (primary metric, "lower" or "higher" is better): what the promotion gate compares.
PRIMARY_METRIC = {
    "gan": ("fid", "lower"),  # generation: FID against the held-out split
    "vae": ("fid", "lower"),
    "restore": ("psnr", "higher"),  # restoration: PSNR against the clean test images
    "vae-restore": ("psnr", "higher"),
    "pix2pix": ("psnr", "higher"),  # paired translation: PSNR against the paired ground truth
    "cyclegan": ("fid", "lower"),  # unpaired translation: FID against the target domain
    "style": ("style_score", "lower"),
    "adain": ("style_score", "lower"),
}


def margin_for(task: str, cfg: Any) -> float:
    """The configured margin (``registry.<metric>_margin``) a challenger must beat the champion by."""
    model_name(task)  # a one-line error for an unknown task
    metric, _ = PRIMARY_METRIC[task]
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
    if task not in PRIMARY_METRIC:
        raise UserError(f"unknown task {task!r} (choose from {', '.join(PRIMARY_METRIC)})")
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
    """What makes two evaluations comparable: the same data, split, sizes and feature network."""
    ext = metrics.get("extractor", {}).get("sha", "?") if isinstance(metrics.get("extractor"), dict) else "-"
    size = metrics.get("n_real", metrics.get("images"))
    other = metrics.get("n_fake", metrics.get("view", metrics.get("style", "")))
    return f"{content_hash[:16]}:{split}:{size}:{other}:{str(ext)[:12]}"


def _client() -> Any:
    import mlflow
    from mlflow import MlflowClient

    from productgen.tracking import tracking_uri

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

    from productgen.tracking import tracking_uri

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


def register_challenger(task: str, model_uri: str, metrics: dict[str, Any], content_hash: str, split: str,
                        run_id: str | None = None, name: str | None = None) -> str:  # fmt: skip
    """Register ``model_uri`` as a new version with its evaluation as tags, and point ``challenger`` at it."""
    import mlflow

    client = _client()
    name = registered_name(task, name)
    metric, _ = PRIMARY_METRIC[task]
    if metric not in metrics:
        raise UserError(f"evaluation has no {metric!r}; evaluate the model before registering it")
    mv = mlflow.register_model(model_uri, name, tags={"task": task})
    version = str(mv.version)
    tags = {f"eval.{k}": str(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    tags |= {"eval.set": eval_set_id(metrics, content_hash, split), "eval.primary_metric": metric}
    if run_id:
        tags["eval.run_id"] = run_id
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def _metric(client: Any, name: str, version: str, metric: str) -> tuple[float | None, str | None]:
    tags = client.get_model_version(name, version).tags
    value = tags.get(f"eval.{metric}")
    return (float(value) if value is not None else None), tags.get("eval.set")


def promote(task: str, version: str | None = None, margin: float = 0.0, force: bool = False,
            name: str | None = None) -> Decision:  # fmt: skip
    """Make ``version`` (default: the challenger) champion if it beats the champion by ``margin``."""
    client = _client()
    name = registered_name(task, name)
    metric, better = PRIMARY_METRIC[task]
    with promotion_lock():
        version = version or alias_version(client, name, CHALLENGER)
        if version is None:
            raise UserError(f"{name}: no challenger to promote; register one (or pass --version)")
        other = client.get_model_version(name, version).tags.get("task")
        if other not in (None, task):
            raise UserError(f"{name} v{version} is a {other} model, not {task}; name the task it was registered for")
        value, eval_set = _metric(client, name, version, metric)
        before = alias_version(client, name, CHAMPION)
        evidence: dict[str, Any] = {"metric": metric, "better": better, "margin": margin,
                                    "challenger": {"version": version, metric: value, "eval_set": eval_set}}  # fmt: skip
        if before == version:
            promoted, reason = False, f"version {version} is already champion"
        elif force:
            promoted, reason = True, "forced by the user"
        elif value is None:
            promoted, reason = False, f"version {version} has no {metric} evaluation"
        elif before is None:
            promoted, reason = True, "no champion yet"
        else:
            champ_value, champ_set = _metric(client, name, before, metric)
            evidence["champion"] = {"version": before, metric: champ_value, "eval_set": champ_set}
            if champ_value is None or champ_set != eval_set:
                promoted, reason = False, (f"champion {before} was evaluated on another set ({champ_set}) than "
                                           f"{version} ({eval_set}); re-evaluate both on the same set")  # fmt: skip
            else:
                gain = (champ_value - value) if better == "lower" else (value - champ_value)
                evidence["gain"] = gain
                promoted = gain > margin
                reason = (f"{metric} {value:.4g} vs champion {champ_value:.4g}: "
                          f"{'better' if gain > 0 else 'not better'} by {abs(gain):.4g} (margin {margin:g})")  # fmt: skip
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
            if before is not None:
                client.set_model_version_tag(name, before, "promotion.replaced_by", version)
        after = alias_version(client, name, CHAMPION)
        if promoted and after != version:
            raise RuntimeError(f"{name}: champion alias is {after} right after setting it to {version}")
        record = {"time": stamp, "promoted": promoted, "reason": reason, "champion_before": before,
                  "champion_after": after, "evidence": evidence}  # fmt: skip
        client.set_model_version_tag(name, version, "promotion.decision", "promoted" if promoted else "rejected")
        client.set_model_version_tag(name, version, "promotion.record", json.dumps(record)[:4900])
        _append_history(client, name, {"action": "promote", "version": version, **record})
    return Decision(task, name, version, promoted, reason, before, after, evidence)


def rollback(task: str, to_version: str | None = None, name: str | None = None) -> Decision:
    """Point ``champion`` back at ``to_version`` (default: the champion before the current one)."""
    client = _client()
    name = registered_name(task, name)
    with promotion_lock():
        current = alias_version(client, name, CHAMPION)
        if to_version is None:
            previous = [e["champion_before"] for e in history(task, name) if e.get("champion_after") == current
                        and e.get("champion_before") and e["champion_before"] != current]  # fmt: skip
            if not previous:
                raise UserError(f"{name}: no earlier champion to roll back to; pass --to VERSION")
            to_version = previous[-1]
        client.get_model_version(name, to_version)  # raises if missing
        client.set_registered_model_alias(name, CHAMPION, to_version)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"time": stamp, "promoted": True, "reason": "rollback", "champion_before": current,
                  "champion_after": to_version, "evidence": {}}  # fmt: skip
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
