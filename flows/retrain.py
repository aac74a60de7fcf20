"""The ``retrain`` Prefect flow: validate data -> train -> (tune) -> evaluate -> register -> promote if better.

Thin shells over ``productgen`` functions (each step is implemented once, in ``src/productgen``): this file
adds only orchestration: typed parameters, retries with backoff where a tracking server or database may
not answer, timeouts, no result caching on side-effecting tasks, and Prefect artifacts (the challenger
against the champion, the sample grid, the validation report).

Runs the same way in Prefect's ephemeral mode (no server, the default) and against a server given by
``PREFECT_API_URL``:

    python flows/retrain.py --profile quick-cpu          # one run now
    prefect deploy --all && prefect worker start -p productgen   # scheduled runs (prefect.yaml)
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pydantic import BaseModel, Field

TRANSIENT_RETRIES = {"retries": 3, "retry_delay_seconds": [5, 20, 60]}


class RetrainParams(BaseModel):
    """What a retraining run is: which model, on which data, with which profile."""

    task: Literal["gan", "vae", "restore", "vae-restore", "pix2pix", "cyclegan", "style", "adain"] = Field(
        "gan", description="model task: generation (gan, vae), restoration (restore, vae-restore), translation "
        "(pix2pix, cyclegan), style transfer (style, adain)")
    params_file: str = Field("params.yaml", description="params.yaml of the project (data, model, thresholds)")
    profile: str | None = Field(None, description="partial params file or name in flows/profiles/, e.g. quick-cpu")
    tune_trials: int = Field(0, ge=0, description="Optuna trials before the final training (0: no tuning)")
    promote: bool = Field(True, description="promote the new model if it beats the champion")
    margin: float | None = Field(None, description="override the registry margin of the task's primary metric")
    run_tag: str | None = Field(None, description="folder name for this run's outputs (default: a timestamp)")
    model_name: str | None = Field(None, description="registered model (default productgen-<task>); a second model "
                                   "of a task gets its own, e.g. productgen-restore-sr2 with an sr2 profile")


def _params(rp: RetrainParams, overrides: dict[str, Any] | None = None) -> Any:
    from productgen.config import load_params

    return load_params(rp.params_file, overrides or {}, rp.profile)


@task(name="validate-data", cache_policy=NONE, timeout_seconds=3600)
def validate_data(rp: RetrainParams) -> dict[str, Any]:
    """Prepare the dataset from its source and validate it; a failure stops the flow before any training."""
    from productgen.data.prepare import prepare
    from productgen.data.validate import validate

    p = _params(rp)
    prepared = prepare(p.data, show_progress=False)
    result = validate(prepared.out, p.validation, p.data)
    report = Path(p.validation.out) / "report.md"
    create_markdown_artifact(key="data-validation", description=result.one_line(),
                             markdown=f"**{result.one_line()}**\n\nReport: `{report.resolve()}`\n\n"
                             + report.read_text(encoding="utf-8")[:20000])  # fmt: skip
    if not result.success:
        from productgen.errors import ValidationFailed

        raise ValidationFailed(f"{result.one_line()} (report: {report.resolve()})")
    return {"prepared": str(prepared.out), "content_hash": prepared.content_hash, "counts": prepared.counts}


@task(name="tune", cache_policy=NONE, timeout_seconds=6 * 3600)
def tune_model(rp: RetrainParams) -> dict[str, Any]:
    """Optuna study; its best parameters feed the final training."""
    from productgen.tune import tune  # type: ignore[import-not-found]

    best = tune(_params(rp), rp.task, trials=rp.tune_trials)
    return dict(best)


@task(name="train", cache_policy=NONE, timeout_seconds=12 * 3600, retries=1, retry_delay_seconds=30)
def train_model(rp: RetrainParams, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train (on the GPU when there is one); a retry resumes from the last checkpoint of this run."""
    from productgen.train import train
    from productgen.training.checkpoint import latest_checkpoint

    p = _params(rp, overrides)
    resume = latest_checkpoint(Path(p.train.out_for(rp.task)) / "checkpoints") is not None
    result = train(p, rp.task, resume=resume, show_progress=False, track=True)
    return {"out": str(result.out), "run_id": result.run_id, "model_uri": result.model_uri, "step": result.step,
            "losses": result.final_losses}  # fmt: skip


@task(name="evaluate", cache_policy=NONE, timeout_seconds=6 * 3600, **TRANSIENT_RETRIES)
def evaluate_model(rp: RetrainParams, overrides: dict[str, Any]) -> dict[str, Any]:
    from productgen.pipeline import evaluate_model as run

    return run(_params(rp, overrides), track=True, show_progress=False, task=rp.task)


@task(name="register-and-promote", cache_policy=NONE, timeout_seconds=600, **TRANSIENT_RETRIES)
def register_and_promote(rp: RetrainParams, overrides: dict[str, Any], trained: dict[str, Any],
                         metrics: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    from mlflow import MlflowClient

    from productgen import registry

    p = _params(rp, overrides)
    version = registry.register_challenger(rp.task, trained["model_uri"], metrics, data["content_hash"],
                                           p.evaluate.split, metrics.get("mlflow_run_id"), rp.model_name)  # fmt: skip
    name = registry.registered_name(rp.task, rp.model_name)
    client = MlflowClient()
    champion = registry.alias_version(client, name, registry.CHAMPION)
    champ_tags = client.get_model_version(name, champion).tags if champion else {}
    metric, better = registry.PRIMARY_METRIC[rp.task]
    keys = [metric] + [k for k, v in metrics.items() if k != metric and isinstance(v, (int, float))
                       and not isinstance(v, bool)][:9]  # fmt: skip
    rows = []
    for key in keys:
        rows.append({"metric": key, f"challenger v{version}": metrics.get(key),
                     f"champion v{champion}" if champion else "champion": champ_tags.get(f"eval.{key}", "-")})  # fmt: skip
    create_table_artifact(key=f"{rp.task}-challenger-vs-champion", table=rows,
                          description=f"{name}: challenger v{version} against champion v{champion}")  # fmt: skip
    decision = None
    if rp.promote:
        margin = registry.margin_for(rp.task, p.registry) if rp.margin is None else rp.margin
        decision = registry.decision_dict(registry.promote(rp.task, version, margin, name=rp.model_name))
    return {"model": name, "version": version, "decision": decision}


def _grid_artifact(eval_out: Path, title: str) -> None:
    grid = next((g for g in (eval_out / "samples.png", eval_out / "before_after.png") if g.is_file()), None)
    if grid is not None:
        data = base64.b64encode(grid.read_bytes()).decode("ascii")
        create_markdown_artifact(key="sample-grid", description=title,
                                 markdown=f"### {title}\n\n![samples](data:image/png;base64,{data})\n\n`{grid.resolve()}`")  # fmt: skip


@flow(name="retrain", log_prints=True)
def retrain(params: RetrainParams = RetrainParams()) -> dict[str, Any]:
    """Validate -> train -> (tune) -> evaluate -> register -> promote if better."""
    logger = get_run_logger()
    base = _params(params)
    tag = params.run_tag or time.strftime("%Y%m%d-%H%M%S")
    data = validate_data(params)
    logger.info("data valid: %s", data["counts"])
    overrides: dict[str, Any] = {
        "train.out": f"{base.train.out_for(params.task)}/{tag}",
        "evaluate.model": f"{base.train.out_for(params.task)}/{tag}/model",
        "evaluate.out": f"{base.evaluate.out.replace('{task}', params.task)}/{tag}",
    }
    if params.tune_trials > 0 and params.task != "gan":
        raise ValueError(f"tune_trials: tuning is implemented for the gan task only, not {params.task!r}")
    if params.tune_trials > 0:
        best = tune_model(params)
        overrides |= {f"gan.{k}": v for k, v in best.items()}
    trained = train_model(params, overrides)
    metrics = evaluate_model(params, overrides)
    _grid_artifact(Path(overrides["evaluate.out"]), f"{params.task}: 4 real then 8 generated images per category"
                   if params.task in ("gan", "vae") else f"{params.task}: before / after")  # fmt: skip
    result = register_and_promote(params, overrides, trained, metrics, data)
    d = result["decision"]
    verdict = ("promoted to champion" if d and d["promoted"] else "kept the champion") if d else "not promoted"
    from productgen.registry import PRIMARY_METRIC

    metric = PRIMARY_METRIC[params.task][0]
    print(f"{result['model']} v{result['version']}: {metric} {metrics[metric]:.4g}; {verdict}"
          + (f" ({d['reason']})" if d else ""))  # fmt: skip
    return {"data": data, "trained": trained, "metrics": {k: v for k, v in metrics.items() if k != "extractor"},
            "registry": result, "outputs": overrides}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the retrain flow once (Prefect ephemeral mode unless PREFECT_API_URL).")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None, help="e.g. quick-cpu (flows/profiles/quick-cpu.yaml)")
    ap.add_argument("--task", default="gan", choices=["gan", "vae", "restore", "vae-restore", "pix2pix", "cyclegan",
                                                       "style", "adain"])
    ap.add_argument("--tune-trials", type=int, default=0)
    ap.add_argument("--no-promote", action="store_true")
    ap.add_argument("--model-name", default=None, help="registered model (default productgen-TASK)")
    args = ap.parse_args(argv)
    rp = RetrainParams(task=args.task, params_file=args.params, profile=args.profile, tune_trials=args.tune_trials,
                       promote=not args.no_promote, model_name=args.model_name)  # fmt: skip
    try:
        out = retrain(rp)
    except Exception as err:  # the flow run (and Prefect) already logged the details
        print(f"error: retrain flow failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(json.dumps(out["registry"], default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
