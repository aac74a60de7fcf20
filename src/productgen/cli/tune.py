"""``productgen tune``: Optuna hyperparameter search (the logic lives in ``productgen.tune``)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from productgen.cli.common import DryRunOption, user_errors
from productgen.cli.data import Params, Profile, _load

tune_app = typer.Typer(help="Hyperparameter search with Optuna (one resumable study per model).", no_args_is_help=True)


@tune_app.command("gan")
@user_errors
def tune_gan(
    params: Params = None,
    profile: Profile = None,
    trials: Annotated[
        Optional[int], typer.Option("--trials", "-n", help="New trials to run (default: tune.trials).")
    ] = None,
    timeout: Annotated[
        Optional[float], typer.Option("--timeout", help="Start no new trial after this many seconds.")
    ] = None,
    storage: Annotated[
        Optional[str],
        typer.Option("--storage", help="Optuna storage: SQLAlchemy URL or SQLite file (default: tune.storage)."),
    ] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study name (default: tune.study).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Trial folders and best_params.yaml.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Training steps per trial.")] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Steps between intermediate FIDs.")] = None,
    eval_images: Annotated[
        Optional[int], typer.Option("--eval-images", help="Real (and generated) images per intermediate FID.")
    ] = None,
    pruner: Annotated[Optional[str], typer.Option("--pruner", help="median, hyperband or none.")] = None,
    total_trials: Annotated[Optional[int], typer.Option(
        "--total-trials", help="Stop every worker once the shared study holds this many finished trials.")] = None,
    track: Annotated[
        bool, typer.Option("--track/--no-track", help="Log a parent run and one nested run per trial to MLflow.")
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Search the GAN's learning rates, beta1, DiffAugment policy and D steps (params.yaml tune.space) with Optuna.

    Each trial trains into OUT/trial-N/ and reports an intermediate FID; poor trials are pruned.

    The study lives in --storage and resumes when run again; the best gan: settings go to OUT/best_params.yaml.

    Examples:

      productgen tune gan --trials 20

      productgen tune gan --trials 20 --timeout 3600 --storage postgresql://tuner@db/optuna   # one per worker
    """
    p = _load(params, {"tune.trials": trials, "tune.timeout": timeout, "tune.storage": storage, "tune.study": study,
                       "tune.out": out, "tune.steps": steps, "tune.eval_every": eval_every,
                       "tune.eval_images": eval_images, "tune.pruner": pruner,
                       "tune.total_trials": total_trials}, profile)  # fmt: skip
    if dry_run:  # print_config takes one dataclass; this is three sections
        from productgen.config import to_dict

        typer.echo(json.dumps({"tune": to_dict(p.tune), "train": to_dict(p.train), "gan": to_dict(p.gan)}, indent=2))
        return
    from productgen.tune import tune

    r = tune(p, "gan", show_progress=not quiet, track=track, echo=typer.echo)
    counts = {s: sum(t.state == s for t in r.new_trials) for s in ("complete", "pruned", "fail")}
    typer.echo(f"study {r.study!r} ({r.storage}): {len(r.new_trials)} new trials ({counts['complete']} complete, "
               f"{counts['pruned']} pruned, {counts['fail']} failed), {r.trials_in_study} in all")  # fmt: skip
    if r.best is not None:
        typer.echo(f"best: trial {r.best.number}, FID {r.best.value:.3f} ({r.eval_images} images, step {r.best.step})")
        typer.echo(f"best params: {r.best_params_file}")
    else:
        typer.echo("no trial has completed yet: no best params")
    if r.parent_run_id:
        typer.echo(f"MLflow parent run {r.parent_run_id}")
