"""``productgen tune``: Optuna hyperparameter search (the logic lives in ``productgen.pipeline.tune``)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from productgen.cli.common import DryRunOption, Params, Profile, load_cli_params, user_errors

tune_app = typer.Typer(
    help="Hyperparameter search with Optuna (one resumable study per task, on its primary metric).",
    no_args_is_help=True,
)


def _tune_command(task: str) -> None:
    from productgen.tasks import get

    spec = get(task)

    @user_errors
    def command(
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
        study: Annotated[
            Optional[str], typer.Option("--study", help="Study name (default: tune.study, productgen-TASK).")
        ] = None,
        out: Annotated[Optional[str], typer.Option("--out", "-o", help="Trial folders and best_params.yaml.")] = None,
        steps: Annotated[Optional[int], typer.Option("--steps", help="Training steps per trial.")] = None,
        eval_every: Annotated[
            Optional[int], typer.Option("--eval-every", help="Steps between intermediate evaluations.")
        ] = None,
        eval_images: Annotated[
            Optional[int], typer.Option("--eval-images", help="Images per intermediate evaluation.")
        ] = None,
        pruner: Annotated[Optional[str], typer.Option("--pruner", help="median, hyperband or none.")] = None,
        total_trials: Annotated[
            Optional[int],
            typer.Option(
                "--total-trials", help="Stop every worker once the shared study holds this many finished trials."
            ),
        ] = None,
        track: Annotated[
            bool, typer.Option("--track/--no-track", help="Log a parent run and one nested run per trial to MLflow.")
        ] = True,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
        dry_run: DryRunOption = False,
    ) -> None:
        p = load_cli_params(
            params,
            {
                "tune.trials": trials,
                "tune.timeout": timeout,
                "tune.storage": storage,
                "tune.study": study,
                "tune.out": out,
                "tune.steps": steps,
                "tune.eval_every": eval_every,
                "tune.eval_images": eval_images,
                "tune.pruner": pruner,
                "tune.total_trials": total_trials,
            },
            profile,
        )
        if dry_run:  # print_config takes one dataclass; this is three sections
            from productgen.config import to_dict

            t = to_dict(p.tune) | {"study": p.tune.study_for(task), "out": p.tune.out_for(task)}
            t["space"] = {task: t["space"].get(task)}
            typer.echo(
                json.dumps(
                    {"tune": t, "train": to_dict(p.train), spec.section: to_dict(getattr(p, spec.section))}, indent=2
                )
            )
            return
        from productgen.pipeline.tune import label, tune

        r = tune(p, task, show_progress=not quiet, track=track, echo=typer.echo)
        counts = {s: sum(t.state == s for t in r.new_trials) for s in ("complete", "pruned", "fail")}
        typer.echo(
            f"study {r.study!r} ({r.storage}): {len(r.new_trials)} new trials ({counts['complete']} complete, "
            f"{counts['pruned']} pruned, {counts['fail']} failed), {r.trials_in_study} in all"
        )
        if r.best is not None:
            typer.echo(
                f"best: trial {r.best.number}, {label(r.metric)} {r.best.value:.4f} "
                f"({r.eval_images} images, step {r.best.step})"
            )
            typer.echo(f"best params: {r.best_params_file}")
        else:
            typer.echo("no trial has completed yet: no best params")
        if r.parent_run_id:
            typer.echo(f"MLflow parent run {r.parent_run_id}")

    better = "higher" if spec.direction == "higher" else "lower"
    paragraphs = [  # one line each: the help renderer keeps line breaks
        f"Search the settings of {spec.summary} with Optuna.",
        f"The search space is params.yaml tune.space.{task} (fields of the {spec.section}: section, each a range "
        f"or a list of choices). Each trial trains into OUT/trial-N/ and reports {spec.metric} ({better} is "
        "better) on tune.eval_images images of tune.eval_split every tune.eval_every steps; poor trials are pruned.",
        f"The study (default productgen-{task}) lives in --storage and resumes when run again; the best "
        f"{spec.section}: settings go to OUT/best_params.yaml (default OUT: artifacts/tune/{task}), usable as "
        "--profile.",
        "Examples:",
        f"  productgen tune {task} --trials 20",
        f"  productgen tune {task} --trials 20 --timeout 3600 --storage postgresql://tuner@db/optuna   # per worker",
        f"  productgen train {task} --profile artifacts/tune/{task}/best_params.yaml",
    ]
    command.__doc__ = "\n\n".join(paragraphs)
    tune_app.command(task, help=command.__doc__)(command)


def _register_tune_commands() -> None:
    from productgen.tasks import TASKS

    for name in TASKS:
        _tune_command(name)


_register_tune_commands()
