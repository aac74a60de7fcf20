"""The ``retrain`` Prefect flow, the weekly loop: validate data -> snapshot it -> skip if nothing changed -> drift
report -> (tune) -> train -> evaluate -> score the champion on the same set -> gate -> register -> promote.

Thin shells over ``productgen`` functions (each step is implemented once, in ``src/productgen``): this file
adds only orchestration: typed parameters, retries with backoff where a tracking server or database may
not answer, timeouts, no result caching on side-effecting tasks, notifications, and Prefect artifacts (the
challenger against the champion, the sample grid, the validation and drift reports).

What is compared, on what: the challenger and the current champion (``models:/<name>@champion``, whichever
machine trained it) are both scored in this run, with this code, on this week's evaluation split; the gate
(:mod:`productgen.registry.gate`) decides on that pair, per category too. Stored metrics of earlier weeks are history.

Runs the same way in Prefect's ephemeral mode (no server, the default) and against a server given by
``PREFECT_API_URL``:

    python flows/retrain.py --profile quick-cpu          # one run now
    prefect deploy --all && prefect worker start -p productgen   # scheduled runs (prefect.yaml)
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pydantic import BaseModel, Field, field_validator

from productgen.tasks import names as task_names

TRANSIENT_RETRIES = {"retries": 3, "retry_delay_seconds": [5, 20, 60]}


class RetrainParams(BaseModel):
    """What a retraining run is: which model, on which data, with which profile."""

    task: str = Field("gan", description="model task, one of the task registry's: " + ", ".join(task_names()))
    params_file: str = Field("params.yaml", description="params.yaml of the project (data, model, thresholds)")
    profile: str | None = Field(None, description="partial params file or name in flows/profiles/, e.g. quick-cpu")
    tune_trials: int = Field(0, ge=0, description="Optuna trials before the final training (0: no tuning)")
    promote: bool = Field(True, description="promote the new model if the gate lets it through")
    margin: float | None = Field(None, description="override the registry margin of the task's primary metric")
    run_tag: str | None = Field(None, description="folder name for this run's outputs (default: a timestamp)")
    model_name: str | None = Field(
        None,
        description="registered model (default productgen-<task>); a second model "
        "of a task gets its own, e.g. productgen-restore-sr2 with an sr2 profile",
    )
    force: bool = Field(False, description="train even when data, code and params equal the champion's")

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in task_names():
            raise ValueError(f"unknown task {value!r} (choose from {', '.join(task_names())})")
        return value


def _params(rp: RetrainParams, overrides: dict[str, Any] | None = None) -> Any:
    from productgen.config import load_params

    return load_params(rp.params_file, overrides or {}, rp.profile)


def _model(rp: RetrainParams) -> str:
    from productgen.registry.promotion import registered_name

    return registered_name(rp.task, rp.model_name)


@task(name="validate-data", cache_policy=NONE, timeout_seconds=3600)
def validate_data(rp: RetrainParams) -> dict[str, Any]:
    """Prepare the dataset from its source and validate it; a failure stops the flow before any training."""
    from productgen.data.prepare import prepare
    from productgen.data.validate import validate

    p = _params(rp)
    prepared = prepare(p.data, show_progress=False)
    result = validate(prepared.out, p.validation, p.data)
    report = Path(p.validation.out) / "report.md"
    create_markdown_artifact(
        key="data-validation",
        description=result.one_line(),
        markdown=f"**{result.one_line()}**\n\nReport: `{report.resolve()}`\n\n"
        + report.read_text(encoding="utf-8")[:20000],
    )
    if not result.success:
        from productgen.common.errors import ValidationFailed

        raise ValidationFailed(f"{result.one_line()} (report: {report.resolve()})")
    return {
        "prepared": str(prepared.out),
        "content_hash": prepared.content_hash,
        "counts": prepared.counts,
        "classes": prepared.classes,
    }


@task(name="snapshot-data", cache_policy=NONE, timeout_seconds=3600)
def snapshot_data(rp: RetrainParams, data: dict[str, Any]) -> dict[str, str]:
    """Version the prepared data with DVC (add + push) and compute the run's key: its lineage."""
    from productgen.config import to_dict
    from productgen.tracking import lineage

    p = _params(rp)
    prepared = Path(data["prepared"])
    tags: dict[str, str] = {
        "content_hash": data["content_hash"],
        "categories": json.dumps(data["classes"]),
        "manifest_sha256": lineage.file_sha256(prepared / "manifest.csv"),
    }
    if p.retrain.snapshot:
        snap = lineage.snapshot_dataset(
            prepared, _model(rp), p.retrain.snapshot_dir, p.retrain.remote, Path(p.retrain.dvc_repo)
        )
        root = lineage.dvc_root(Path(p.retrain.dvc_repo))
        tags |= {
            "data_md5": snap.md5,
            "dvc_repo": str(root),
            "dvc_pointer": str(snap.pointer.relative_to(root)),
            "dvc_remote": snap.remote or "(default)",
            "dvc_pushed": str(snap.pushed).lower(),
        }
    else:
        tags["data_md5"] = f"none (retrain.snapshot: false; content hash {data['content_hash'][:16]})"
    resolved = {k: v for k, v in to_dict(p).items() if k not in ("registry", "retrain", "web")}
    resolved["tune_trials"] = rp.tune_trials
    code = lineage.code_version()
    tags |= code | {"params_hash": lineage.params_hash(resolved)}
    tags["key"] = lineage.run_key(
        rp.task, _model(rp), tags["data_md5"] if p.retrain.snapshot else data["content_hash"], code, tags["params_hash"]
    )
    return tags


@task(name="champion-lineage", cache_policy=NONE, timeout_seconds=300, **TRANSIENT_RETRIES)
def champion_lineage(rp: RetrainParams) -> dict[str, Any] | None:
    """The current champion's version and lineage tags (None: no champion yet)."""
    from productgen.common.errors import UserError
    from productgen.registry import promotion as registry

    try:
        return registry.lineage_of(rp.task, None, rp.model_name)
    except UserError:
        return None


@task(name="earlier-decision", cache_policy=NONE, timeout_seconds=300, **TRANSIENT_RETRIES)
def earlier_decision(rp: RetrainParams, key: str, champion: str | None) -> tuple[str, str] | None:
    """A version made from this very key and already judged against this champion (refused, rejected, waiting)."""
    from productgen.registry import promotion as registry

    return registry.earlier_decision(rp.task, key, champion, rp.model_name)


@task(name="drift-report", cache_policy=NONE, timeout_seconds=3600)
def drift_report(rp: RetrainParams, data: dict[str, Any], champion: dict[str, Any] | None, out: str) -> dict[str, Any]:
    """This week's data against the champion's training snapshot (restored with DVC); may stop the flow."""
    from productgen.common.errors import UserError
    from productgen.data.drift import drift_report as report
    from productgen.data.drift import one_line
    from productgen.tracking import lineage

    p = _params(rp)
    old: Path | None = None
    label = "champion's training data"
    if champion and str(champion.get("data_md5", "")).endswith(".dir") and p.retrain.snapshot:
        root = lineage.dvc_root(Path(p.retrain.dvc_repo))
        old = root / p.retrain.snapshot_dir / ".restored" / champion["data_md5"].removesuffix(".dir")[:16]
        label = f"training data of champion v{champion['version']}"
        if not (old / "dataset.json").is_file():
            old.parent.mkdir(parents=True, exist_ok=True)
            (old.parent / ".gitignore").write_text("*\n")  # a cache of restored snapshots, never committed
            shutil.rmtree(old, ignore_errors=True)  # a restore that stopped half-way
            try:
                lineage.restore_snapshot(champion["data_md5"], old, p.retrain.remote, root)
            except UserError as err:  # the report informs; a missing old snapshot must not stop the week
                get_run_logger().warning("drift: no comparison with v%s's data (%s)", champion["version"], err)
                label, old = f"{label} (not restorable: {str(err)[:200]})", None
    r = report(Path(data["prepared"]), old, p.retrain.drift, Path(out), old_label=label)
    create_markdown_artifact(
        key=f"{rp.task}-drift",
        description=one_line(r),
        markdown=(Path(out) / "drift.md").read_text(encoding="utf-8")[:20000],
    )
    if r["stop"]:
        from productgen.common.errors import ValidationFailed

        raise ValidationFailed(f"{one_line(r)} (retrain.drift thresholds; report: {Path(out).resolve() / 'drift.md'})")
    return r


@task(name="tune", cache_policy=NONE, timeout_seconds=6 * 3600)
def tune_model(rp: RetrainParams) -> dict[str, Any]:
    """Optuna study of the task (on its primary metric); its best parameters, as dotted overrides of the task's
    params section (``{"restore.lr": ...}``), feed the final training."""
    from productgen.pipeline.tune import tune  # type: ignore[import-not-found]

    best = tune(_params(rp), rp.task, trials=rp.tune_trials)
    return best.overrides()


@task(name="train", cache_policy=NONE, timeout_seconds=12 * 3600, retries=1, retry_delay_seconds=30)
def train_model(rp: RetrainParams, overrides: dict[str, Any], lineage_tags: dict[str, str]) -> dict[str, Any]:
    """Train (on the GPU when there is one); a retry resumes from the last checkpoint of this run."""
    from productgen.pipeline.train import train
    from productgen.training.checkpoint import latest_checkpoint

    p = _params(rp, overrides)
    resume = latest_checkpoint(Path(p.train.out_for(rp.task)) / "checkpoints") is not None
    result = train(p, rp.task, resume=resume, show_progress=False, track=True)
    if result.run_id:
        from mlflow import MlflowClient

        client = MlflowClient()
        for k, v in lineage_tags.items():
            client.set_tag(result.run_id, f"lineage.{k}", str(v)[:4900])
    return {
        "out": str(result.out),
        "run_id": result.run_id,
        "model_uri": result.model_uri,
        "step": result.step,
        "losses": result.final_losses,
    }


@task(name="evaluate", cache_policy=NONE, timeout_seconds=6 * 3600, **TRANSIENT_RETRIES)
def evaluate_model(rp: RetrainParams, overrides: dict[str, Any]) -> dict[str, Any]:
    from productgen.pipeline.steps import evaluate_model as run

    return run(_params(rp, overrides), track=True, show_progress=False, task=rp.task)


@task(name="gate-and-promote", cache_policy=NONE, timeout_seconds=6 * 3600, **TRANSIENT_RETRIES)
def gate_and_promote(
    rp: RetrainParams,
    overrides: dict[str, Any],
    trained: dict[str, Any],
    metrics: dict[str, Any],
    data: dict[str, Any],
    lineage_tags: dict[str, str],
    drift_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register the challenger, score the champion beside it on this week's set, decide, promote if better (with
    ``registry.approval: required``: ask for approval instead; the flow then waits for the answer)."""
    from productgen.registry import approval, gate
    from productgen.registry import promotion as registry
    from productgen.registry.rescore import score_pair
    from productgen.tracking import lineage

    p = _params(rp, overrides)
    name = _model(rp)
    version = registry.register_challenger(
        rp.task,
        trained["model_uri"],
        metrics,
        data["content_hash"],
        p.evaluate.split,
        metrics.get("mlflow_run_id"),
        rp.model_name,
        lineage=lineage_tags,
    )
    tag = None
    if p.retrain.snapshot and p.retrain.git_tag:
        repo = Path(lineage_tags["dvc_repo"])
        tag = lineage.tag_snapshot(name, version, repo / lineage_tags["dvc_pointer"], lineage_tags["data_md5"], repo)
        if tag:
            registry.tag_version(rp.task, version, "lineage.git_tag", tag, rp.model_name)
    if drift_summary is not None:
        registry.tag_version(
            rp.task, version, approval.DRIFT_TAG, json.dumps(drift_summary, default=str), rp.model_name
        )
    eval_out = Path(p.evaluate.out)
    challenger, champion = score_pair(
        p, rp.task, Path(p.evaluate.model), metrics, version, Path(data["prepared"]), eval_out / "gate", rp.model_name
    )
    margin = registry.margin_for(rp.task, p.registry) if rp.margin is None else rp.margin
    verdict = gate.decide(rp.task, challenger, champion, p.registry, margin)
    registry.record_verdict(rp.task, version, verdict, rp.model_name)
    _comparison_artifact(rp, name, version, verdict)
    decision = None
    waiting = None
    if rp.promote and verdict.promote and p.registry.approval == "required":
        waiting = approval.request(rp.task, version, p.registry.approval_timeout_hours, rp.model_name)
    elif rp.promote:
        decision = registry.decision_dict(
            registry.promote(rp.task, version, margin, name=rp.model_name, verdict=verdict, cfg=p.registry)
        )
    return {
        "model": name,
        "version": version,
        "decision": decision,
        "approval": waiting,
        "verdict": verdict.reason,
        "evidence": verdict.evidence,
        "git_tag": tag,
    }


@task(name="await-approval", cache_policy=NONE, **TRANSIENT_RETRIES)
def await_approval(rp: RetrainParams, version: str, poll_s: float) -> dict[str, Any]:
    """Poll the version's approval tags until a person answers (web Models page, ``productgen registry approve``
    / ``reject``) or the deadline passes (recorded as timed_out). An approval promotes through the gate."""
    from productgen.registry import approval

    return approval.wait(rp.task, version, poll_s, rp.model_name)


def _approval_decision(answer: dict[str, Any]) -> dict[str, Any]:
    """The promotion decision after an answer: the one approve() made, or the rejection / timeout record's."""
    if answer.get("decision"):
        return answer["decision"]
    from productgen.registry import promotion as registry

    tags = registry._client().get_model_version(answer["model"], answer["version"]).tags
    record = json.loads(tags.get("promotion.record") or "{}")
    return {
        "model": answer["model"],
        "version": answer["version"],
        "promoted": False,
        "reason": record.get("reason") or f"approval {answer.get('state')}",
        "champion_before": record.get("champion_before"),
        "champion_after": record.get("champion_after"),
        "approval": {k: answer.get(k) for k in ("state", "by", "at", "reason", "requested_at", "deadline")},
    }


def _comparison_artifact(rp: RetrainParams, name: str, version: str, verdict: Any) -> None:
    ev = verdict.evidence
    metric = ev.get("metric", "?")
    champ = ev.get("champion") or {}
    chal = ev.get("challenger") or {}
    rows = [
        {
            "category": "(all)",
            f"challenger v{version}": chal.get(metric),
            f"champion v{champ.get('version')}" if champ else "champion": champ.get(metric, "-"),
        }
    ]
    for cat, vals in (chal.get("per_category") or {}).items():
        key = next((k for k in vals if k != "n"), metric)
        other = (champ.get("per_category") or {}).get(cat, {})
        rows.append(
            {
                "category": f"{cat} ({key})",
                f"challenger v{version}": vals.get(key),
                f"champion v{champ.get('version')}" if champ else "champion": other.get(key, "-"),
            }
        )
    create_table_artifact(
        key=f"{rp.task}-challenger-vs-champion",
        table=rows,
        description=f"{name}: v{version} vs champion on {ev.get('eval_set')}: {verdict.reason}"[:900],
    )


def _grid_artifact(eval_out: Path, title: str) -> None:
    grid = next((g for g in (eval_out / "samples.png", eval_out / "before_after.png") if g.is_file()), None)
    if grid is not None:
        data = base64.b64encode(grid.read_bytes()).decode("ascii")
        create_markdown_artifact(
            key="sample-grid",
            description=title,
            markdown=f"### {title}\n\n![samples](data:image/png;base64,{data})\n\n`{grid.resolve()}`",
        )


def _notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: a failed retrain POSTs to the webhook (retrain.notify_url / PRODUCTGEN_NOTIFY_URL)."""
    from productgen.common import notify

    raw = (flow_run.parameters or {}).get("params") or {}
    try:
        rp = RetrainParams(**raw) if isinstance(raw, dict) else raw
        url = notify.notify_url(_params(rp).retrain.notify_url)
    except Exception:  # params that do not even load: only the environment can say where to send
        rp, url = None, notify.notify_url(None)
    notify.post(
        url,
        "retrain-failed",
        {
            "flow_run": flow_run.name,
            "flow_run_id": str(flow_run.id),
            "task": getattr(rp, "task", None),
            "message": str(state.message)[:1000],
        },
    )


@flow(name="retrain", log_prints=True, on_failure=[_notify_failure], on_crashed=[_notify_failure])
def retrain(params: RetrainParams = RetrainParams()) -> dict[str, Any]:
    """Validate -> snapshot -> skip if unchanged -> drift -> (tune) -> train -> evaluate -> gate -> promote."""
    from productgen.common import notify
    from productgen.tasks import get

    logger = get_run_logger()
    base = _params(params)
    tag = params.run_tag or time.strftime("%Y%m%d-%H%M%S")
    data = validate_data(params)
    logger.info("data valid: %s", data["counts"])
    lineage_tags = snapshot_data(params, data)
    champion = champion_lineage(params)
    name = _model(params)
    same: tuple[str, str] | None = None
    if not params.force:
        if champion and champion.get("key") == lineage_tags["key"]:
            same = (champion["version"], "champion")
        else:  # a version of this very key already judged against this champion: training again makes a copy
            same = earlier_decision(params, lineage_tags["key"], champion["version"] if champion else None)
    if same is not None:
        msg = (
            f"skipped: nothing changed since v{same[0]} ({same[1]}; data {lineage_tags['data_md5']}, code "
            f"{lineage_tags['git_commit'][:12]}, params {lineage_tags['params_hash']}); force=true trains anyway"
        )
        print(f"{name}: {msg}")
        create_markdown_artifact(key=f"{params.task}-skipped", markdown=f"**{name}: {msg}**", description=msg[:900])
        return {
            "data": data,
            "lineage": lineage_tags,
            "registry": {
                "model": name,
                "skipped": True,
                "champion": champion["version"] if champion else None,
                "same_as": same[0],
                "same_decision": same[1],
                "reason": msg,
            },
        }
    eval_dir = base.evaluate.out.replace("{task}", params.task)
    overrides: dict[str, Any] = {
        "train.out": f"{base.train.out_for(params.task)}/{tag}",
        "evaluate.model": f"{base.train.out_for(params.task)}/{tag}/model",
        "evaluate.out": f"{eval_dir}/{tag}",
    }
    drift = drift_report(params, data, champion, f"{eval_dir}/{tag}/drift")
    if params.tune_trials > 0:
        overrides |= tune_model(params)
    trained = train_model(params, overrides, lineage_tags)
    if trained.get("run_id"):
        from mlflow import MlflowClient

        MlflowClient().log_artifacts(trained["run_id"], f"{eval_dir}/{tag}/drift", artifact_path="drift")
    metrics = evaluate_model(params, overrides)
    family = get(params.task).family
    _grid_artifact(
        Path(overrides["evaluate.out"]),
        f"{params.task}: 4 real then 8 generated images per category"
        if family == "generation"
        else f"{params.task}: before / after",
    )
    drift_summary = {k: drift[k] for k in ("new_categories", "removed_categories", "duplicate_share", "alerts")}
    result = gate_and_promote(params, overrides, trained, metrics, data, lineage_tags, drift_summary)
    if result.get("approval"):
        asked = result["approval"]
        link = notify.models_page(base.registry.review_url)
        print(
            f"{result['model']} v{result['version']}: passed the gate ({result['verdict']}); waiting for approval "
            f"until {asked['deadline']}: {link}, or productgen registry approve|reject {params.task} "
            f"--version {result['version']}"
        )
        notify.post(
            notify.notify_url(base.retrain.notify_url),
            "approval-requested",
            {
                "model": result["model"],
                "version": result["version"],
                "task": params.task,
                "reason": result["verdict"],
                "deadline": asked["deadline"],
                "url": link,
                "cli": f"productgen registry approve {params.task} --version {result['version']}",
            },
        )
        poll = base.registry.approval_poll_seconds
        answer = await_approval.with_options(
            timeout_seconds=base.registry.approval_timeout_hours * 3600 + max(600.0, 10 * poll)
        )(params, result["version"], poll)
        result["approval"] = answer
        result["decision"] = _approval_decision(answer)
    d = result["decision"]
    verdict = ("promoted to champion" if d["promoted"] else "kept the champion") if d else "not promoted"
    answer = result.get("approval") or {}
    if answer.get("state") in ("approved", "rejected", "timed_out"):
        who = f" by {answer.get('by')}" if answer.get("by") else ""
        verdict = f"approval {answer['state'].replace('_', ' ')}{who}; {verdict}"
    ev = result["evidence"]
    metric = ev.get("metric", get(params.task).metric)
    champ = ev.get("champion")
    vs = f" (champion v{champ['version']} on the same set: {champ[metric]:.4g})" if champ else ""
    print(
        f"{result['model']} v{result['version']}: {metric} {metrics[metric]:.4g}{vs}; {verdict}"
        + (f" ({d['reason']})" if d else f" ({result['verdict']})")
    )
    if d and d["promoted"]:
        notify.post(
            notify.notify_url(base.retrain.notify_url),
            "promoted",
            {
                "model": result["model"],
                "version": result["version"],
                "reason": d["reason"],
                "champion_before": d["champion_before"],
                "metric": metric,
                "value": metrics[metric],
            },
        )
    return {
        "data": data,
        "lineage": lineage_tags,
        "drift": drift_summary,
        "trained": trained,
        "metrics": {k: v for k, v in metrics.items() if k != "extractor"},
        "registry": result,
        "outputs": overrides,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Run the retrain flow once (Prefect ephemeral mode unless PREFECT_API_URL)."
    )
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None, help="e.g. quick-cpu (flows/profiles/quick-cpu.yaml)")
    ap.add_argument("--task", default="gan", choices=task_names())
    ap.add_argument("--tune-trials", type=int, default=0)
    ap.add_argument("--no-promote", action="store_true")
    ap.add_argument("--model-name", default=None, help="registered model (default productgen-TASK)")
    ap.add_argument("--force", action="store_true", help="train even when nothing changed since the champion")
    ap.add_argument("--run-tag", default=None, help="folder name of this run's outputs (default: a timestamp)")
    args = ap.parse_args(argv)
    rp = RetrainParams(
        task=args.task,
        params_file=args.params,
        profile=args.profile,
        tune_trials=args.tune_trials,
        promote=not args.no_promote,
        model_name=args.model_name,
        force=args.force,
        run_tag=args.run_tag,
    )
    try:
        out = retrain(rp)
    except Exception as err:  # the flow run (and Prefect) already logged the details
        print(
            f"error: retrain flow failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(out["registry"], default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
