"""Approval before promotion: a person answers for a challenger the gate let through (``registry.approval:
required``).

Why tags on the model version, polled: the registry is already the audit trail every tool reads (the retrain
flow, ``productgen registry``, the web page's Models page), and a version's tags can be written from any of them,
on any machine, while the flow polls them. That works the same in Prefect's ephemeral mode and against a Prefect
server (no Prefect pause, no server-side state), and a flow that crashed while waiting leaves a version that can
still be answered.

States (tag ``approval.state``): ``waiting`` (set by :func:`request`, with ``approval.requested_at`` and
``approval.deadline``) -> ``approved`` (:func:`approve`: promoted through
:func:`productgen.registry.promotion.promote`, the same gate and lock as every promotion) | ``rejected``
(:func:`reject`, a reason is required) | ``timed_out`` (:func:`wait` at the deadline). The answer's
``approval.by``, ``approval.at`` and ``approval.reason`` are tags too, and the decision is written to the
version's ``promotion.record`` and appended to the model's promotion history.

Who may answer (:func:`can_answer`): the same people who may promote on the web page: with a users file
(``web.users_file``, or ``$PRODUCTGEN_WEB_USERS``) only the users it lists; without one, anyone who can write to
the registry (the local CLI records the OS user). With ``web.auth: mlflow`` the tracking server's own
permissions apply on top (a READ-only user cannot write the tags).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from productgen.common.errors import UserError

STATE = "approval.state"
REQUESTED_AT = "approval.requested_at"
DEADLINE = "approval.deadline"
BY = "approval.by"
AT = "approval.at"
REASON = "approval.reason"
CHAMPION_AT_REQUEST = "approval.champion"  # the champion the gate judged against when the request was made
DECISION = "approval.decision"  # the promotion decision after an approval (JSON), written by approve()
DRIFT_TAG = "drift.summary"  # the flow's drift summary (JSON) on the version

WAITING, APPROVED, REJECTED, TIMED_OUT = "waiting", "approved", "rejected", "timed_out"
ANSWERED = (APPROVED, REJECTED, TIMED_OUT)

USERS_ENV = "PRODUCTGEN_WEB_USERS"  # the web page's users (productgen.web.auth): the same people answer
DEFAULT_USERS_FILE = "web-users.txt"  # web.users_file's default


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(s: str | None) -> datetime | None:
    if not s:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    return None


def current_user() -> str:
    """Who runs this process (the local CLI records this name)."""
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return os.environ.get("USER") or "unknown"


def _configured_users(users_file: str | Path | None) -> set[str] | None:
    """The names in the web page's users (``$PRODUCTGEN_WEB_USERS`` or the users file); None when none is configured.

    Only the names are read (``name:scrypt:...`` entries, :mod:`productgen.web.auth`'s format): who may answer, not
    a sign-in; the registry package does not import the web package."""
    text = os.environ.get(USERS_ENV)
    if not text:
        path = Path(users_file or DEFAULT_USERS_FILE)
        if not path.is_file():
            return None
        text = path.read_text(encoding="utf-8")
    names = {
        entry.partition(":")[0]
        for line in text.splitlines()
        if not line.strip().startswith("#")
        for entry in line.split()
        if ":" in entry
    }
    return names or None


def can_answer(user: str, users_file: str | Path | None = None) -> bool:
    """Whether ``user`` may approve or reject: the rule of who may promote on the web page.

    A users file (``web.users_file``, default ``web-users.txt`` in the working folder) or ``$PRODUCTGEN_WEB_USERS``
    lists who may; without either, anyone who can write to the registry may (the local CLI records the OS user).
    With ``web.auth: mlflow`` the tracking server's permissions still apply to the tag writes."""
    if not user or not user.strip():
        return False
    users = _configured_users(users_file)
    return users is None or user in users


def _client() -> Any:
    from productgen.registry.promotion import _client as client

    return client()


def _tags(client: Any, model: str, version: str) -> dict[str, str]:
    from productgen.registry.promotion import _version_or_error

    return dict(_version_or_error(client, model, str(version)).tags)


def state_of(tags: dict[str, str]) -> dict[str, Any]:
    """The approval tags of a version as a dict (``state`` None: approval was never asked)."""
    return {
        "state": tags.get(STATE),
        "requested_at": tags.get(REQUESTED_AT),
        "deadline": tags.get(DEADLINE),
        "by": tags.get(BY),
        "at": tags.get(AT),
        "reason": tags.get(REASON),
        "champion": tags.get(CHAMPION_AT_REQUEST) or None,
    }


def request(task: str, version: str, timeout_hours: float, name: str | None = None) -> dict[str, Any]:
    """Ask a person to answer for ``version``: alias ``challenger`` on it, ``approval.state=waiting`` with the request
    time and the deadline (now + ``timeout_hours``). Returns the approval dict (:func:`state_of`) plus model and
    version."""
    from productgen.registry import promotion as registry

    if timeout_hours <= 0:
        raise UserError(f"registry.approval_timeout_hours: {timeout_hours:g} must be above 0")
    client = _client()
    model = registry.registered_name(task, name)
    version = str(version)
    tags = _tags(client, model, version)
    if tags.get(STATE) == WAITING:
        raise UserError(f"{model} v{version} already waits for approval (deadline {tags.get(DEADLINE)})")
    now = _now()
    champion = registry.alias_version(client, model, registry.CHAMPION)
    # the state last: whoever lists what waits (web page, CLI, a reviewer's script) and answers it then finds the
    # challenger alias, the request time and the deadline already there (they raced before: a deadline of None)
    client.set_registered_model_alias(model, registry.CHALLENGER, version)
    new = {
        REQUESTED_AT: _iso(now),
        DEADLINE: _iso(now + timedelta(hours=timeout_hours)),
        CHAMPION_AT_REQUEST: champion or "",
        STATE: WAITING,
    }
    for k, v in new.items():
        client.set_model_version_tag(model, version, k, v)
    return {"model": model, "version": version, **state_of(new)}


def _json_tag(tags: dict[str, str], key: str) -> Any:
    with contextlib.suppress(ValueError, TypeError):
        return json.loads(tags[key]) if key in tags else None
    return None


def _drift(client: Any, tags: dict[str, str], run_id: str | None) -> dict[str, Any] | None:
    """The flow's drift summary: the version's ``drift.summary`` tag, else the training run's ``drift/drift.json``."""
    summary = _json_tag(tags, DRIFT_TAG)
    if summary is not None or not run_id:
        return summary
    import tempfile

    with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as tmp:
        path = Path(client.download_artifacts(run_id, "drift/drift.json", tmp))
        r = json.loads(path.read_text(encoding="utf-8"))
        return {k: r.get(k) for k in ("new_categories", "removed_categories", "duplicate_share", "alerts")}
    return None


def describe(task: str, version: str, name: str | None = None) -> dict[str, Any]:
    """One version's approval view: its scores and the champion's on the same set (from the gate's verdict), per
    category, drift summary, lineage and the approval tags. The shape of each :func:`waiting` entry."""
    from productgen.registry import promotion as registry

    client = _client()
    model = registry.registered_name(task, name)
    mv = registry._version_or_error(client, model, str(version))
    return _describe(client, model, mv)


def _describe(client: Any, model: str, mv: Any) -> dict[str, Any]:
    from productgen.registry import promotion as registry

    tags = dict(mv.tags)
    version = str(mv.version)
    scored = registry.stored_scored(client, model, version)
    metrics = {k: v for k, v in scored.metrics.items() if k != "per_category"}
    verdict = _json_tag(tags, registry.GATE_TAG) or {}
    ev = verdict.get("evidence") or {}
    metric = ev.get("metric") or tags.get("eval.primary_metric")
    chal = ev.get("challenger") or {}
    if metric and chal.get(metric) is not None:
        metrics[metric] = chal[metric]  # the score on the set the champion was scored on too
    champ = ev.get("champion") or {}
    champion_metrics = {k: v for k, v in champ.items() if k not in ("version", "per_category")} or None
    return {
        "model": model,
        "version": version,
        "run_id": mv.run_id,
        "metric": metric,
        "metrics": metrics,
        "per_category": scored.metrics.get("per_category") or chal.get("per_category") or {},
        "champion": champ.get("version") or tags.get(CHAMPION_AT_REQUEST) or None,
        "champion_metrics": champion_metrics,
        "champion_per_category": champ.get("per_category") or {},
        "categories": ev.get("categories"),
        "gate_reason": verdict.get("reason"),
        "eval_set": ev.get("eval_set") or tags.get("eval.set"),
        "requested_at": tags.get(REQUESTED_AT),
        "deadline": tags.get(DEADLINE),
        "approval": state_of(tags),
        "drift": _drift(client, tags, mv.run_id),
        "lineage": {
            k[len(registry.LINEAGE_PREFIX) :]: v for k, v in tags.items() if k.startswith(registry.LINEAGE_PREFIX)
        },
    }


def waiting(task: str, name: str | None = None) -> list[dict[str, Any]]:
    """Versions of the task's model that wait for an answer, oldest first (each as :func:`describe` gives it)."""
    from productgen.registry import promotion as registry

    client = _client()
    model = registry.registered_name(task, name)
    if not registry._exists(client, model):
        return []
    versions = [mv for mv in client.search_model_versions(f"name='{model}'") if mv.tags.get(STATE) == WAITING]
    return [_describe(client, model, mv) for mv in sorted(versions, key=lambda mv: int(mv.version))]


def _check_answer(
    client: Any, task: str, model: str, version: str, user: str, users_file: str | Path | None
) -> dict[str, str]:
    if not can_answer(user, users_file):
        raise UserError(
            f"{user!r} may not answer for {model}: not in the users file "
            f"({os.environ.get(USERS_ENV) and '$' + USERS_ENV or users_file or DEFAULT_USERS_FILE}); "
            "add them with: productgen web add-user NAME"
        )
    tags = _tags(client, model, version)
    state = tags.get(STATE)
    if state != WAITING:
        what = "was never asked for approval" if state is None else f"is not waiting for approval (state: {state})"
        raise UserError(
            f"{model} v{version} {what}; list what waits with: productgen registry waiting TASK --name NAME"
        )
    return tags


def _record_refusal(
    client: Any, model: str, version: str, tags: dict[str, str], state: str, by: str | None, reason: str, at: str
) -> dict[str, Any]:
    """Write ``state`` (rejected / timed_out) and the promotion record + history event that say who, when, why."""
    from productgen.registry import promotion as registry

    answer = {AT: at, REASON: reason, **({BY: by} if by else {})}
    for k, v in answer.items():
        client.set_model_version_tag(model, version, k, v[:4900])
    verdict = _json_tag(tags, registry.GATE_TAG) or {}
    champion = registry.alias_version(client, model, registry.CHAMPION)
    approval = {**state_of({**tags, **answer, STATE: state})}
    what = f"rejected by {by}: {reason}" if state == REJECTED else reason
    record = {
        "time": at,
        "promoted": False,
        "reason": what,
        "champion_before": champion,
        "champion_after": champion,
        "evidence": verdict.get("evidence", {}),
        "gate_reason": verdict.get("reason"),
        "approval": approval,
    }
    client.set_model_version_tag(model, version, "promotion.decision", state)
    client.set_model_version_tag(model, version, "promotion.record", json.dumps(record)[:4900])
    registry._append_history(client, model, {"action": state, "version": version, **record})
    # the state last: whoever polls it (the waiting flow) then finds who, when, why and the record already there
    client.set_model_version_tag(model, version, STATE, state)
    return {
        "model": model,
        "version": version,
        "promoted": False,
        **approval,
        "champion_before": champion,
        "champion_after": champion,
        "record": record,
    }


def _timed_out_reason(tags: dict[str, str]) -> str:
    return (
        f"approval timed out: nobody answered between {tags.get(REQUESTED_AT)} and the deadline {tags.get(DEADLINE)} "
        "(registry.approval_timeout_hours)"
    )


def _expire(client: Any, model: str, version: str) -> dict[str, Any] | None:
    """Record ``timed_out`` when the version still waits and its deadline has passed (under the promotion lock);
    the result, or None when it does not apply."""
    from productgen.registry.promotion import promotion_lock

    with promotion_lock():
        tags = _tags(client, model, version)
        deadline = _parse(tags.get(DEADLINE))
        if tags.get(STATE) != WAITING or deadline is None or _now() < deadline:
            return None
        return _record_refusal(client, model, version, tags, TIMED_OUT, None, _timed_out_reason(tags), _iso(_now()))


def approve(
    task: str,
    version: str,
    user: str,
    reason: str | None = None,
    name: str | None = None,
    cfg: Any = None,
    users_file: str | Path | None = None,
) -> dict[str, Any]:
    """``user`` approves a waiting ``version``: the answer is recorded, then the version goes through
    :func:`productgen.registry.promotion.promote` (the gate's verdict against the current champion, the promotion
    lock; a champion that moved since the gate ran is refused with what to run). Returns the approval dict with
    ``promoted``, ``reason`` (the promotion's) and ``decision``."""
    from productgen.registry import promotion as registry

    client = _client()
    model = registry.registered_name(task, name)
    version = str(version)
    user = (user or "").strip()
    if _expire(client, model, version) is not None:
        raise UserError(f"{model} v{version}: the approval deadline has passed (recorded as timed_out); not promoted")
    with registry.promotion_lock():
        _check_answer(client, task, model, version, user, users_file)
        answer = {BY: user, AT: _iso(_now()), REASON: (reason or "").strip(), STATE: APPROVED}  # the state last
        for k, v in answer.items():
            client.set_model_version_tag(model, version, k, v[:4900])
    approval = state_of(_tags(client, model, version))
    d = registry.promote(task, version, name=name, cfg=cfg, approval=approval)
    decision = registry.decision_dict(d)
    client.set_model_version_tag(model, version, DECISION, json.dumps(decision, default=str)[:4900])
    return {
        "model": model,
        "version": version,
        **approval,
        "promoted": d.promoted,
        "promotion_reason": d.reason,
        "decision": decision,
    }


def reject(
    task: str, version: str, user: str, reason: str, name: str | None = None, users_file: str | Path | None = None
) -> dict[str, Any]:
    """``user`` rejects a waiting ``version`` for ``reason`` (required): not promoted; the promotion record and the
    history say who, when and why."""
    from productgen.registry import promotion as registry

    reason = (reason or "").strip()
    if not reason:
        raise UserError("a rejection needs a reason (--reason TEXT): whoever reads the history must learn why")
    client = _client()
    model = registry.registered_name(task, name)
    version = str(version)
    user = (user or "").strip()
    if _expire(client, model, version) is not None:
        raise UserError(f"{model} v{version}: the approval deadline has passed (recorded as timed_out)")
    with registry.promotion_lock():
        tags = _check_answer(client, task, model, version, user, users_file)
        return _record_refusal(client, model, version, tags, REJECTED, user, reason, _iso(_now()))


def wait(task: str, version: str, poll_s: float, name: str | None = None) -> dict[str, Any]:
    """Block until ``version`` is answered (approved and promoted, rejected) or its deadline passes (then recorded
    as ``timed_out``), reading its tags every ``poll_s`` seconds. Returns :func:`state_of` plus ``promoted`` and,
    after an approval, the promotion ``decision``."""
    from productgen.registry import promotion as registry

    client = _client()
    model = registry.registered_name(task, name)
    version = str(version)
    poll_s = max(0.05, float(poll_s))
    grace_until: float | None = None
    while True:
        tags = _tags(client, model, version)
        state = tags.get(STATE)
        if state is None:
            raise UserError(f"{model} v{version} was never asked for approval")
        if state == APPROVED:
            decision = _json_tag(tags, DECISION)
            if decision is not None:
                return {
                    "model": model,
                    "version": version,
                    **state_of(tags),
                    "promoted": bool(decision.get("promoted")),
                    "decision": decision,
                }
            # approve() records the answer, then promotes: give the promotion time to land
            grace_until = grace_until or time.monotonic() + max(120.0, 10 * poll_s)
            if time.monotonic() > grace_until:
                return {"model": model, "version": version, **state_of(tags), "promoted": False, "decision": None}
        elif state in (REJECTED, TIMED_OUT):
            return {"model": model, "version": version, **state_of(tags), "promoted": False, "decision": None}
        else:
            deadline = _parse(tags.get(DEADLINE))
            if deadline is not None and _now() >= deadline:
                done = _expire(client, model, version)
                if done is not None:
                    return {k: v for k, v in done.items() if k != "record"} | {"decision": None}
                continue  # answered just before the deadline: read it again
            if deadline is not None:
                time.sleep(min(poll_s, max(0.05, (deadline - _now()).total_seconds())))
                continue
        time.sleep(poll_s)
