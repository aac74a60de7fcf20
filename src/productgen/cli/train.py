"""``productgen train <task>``: one command per task of the registry, over ``productgen.pipeline.train``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from productgen.cli.common import DryRunOption, Params, Profile, load_cli_params, print_config, user_errors

train_app = typer.Typer(
    help="Train models on a prepared dataset (the same engine for every model).", no_args_is_help=True
)


def _train_command(task: str) -> None:
    from productgen.tasks import get

    spec = get(task)

    @user_errors
    def command(
        params: Params = None,
        profile: Profile = None,
        out: Annotated[Optional[str], typer.Option("--out", "-o", help="Run folder (default: train.out).")] = None,
        max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Train up to this step.")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")] = False,
        batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per step and process.")] = None,
        device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
        precision: Annotated[Optional[str], typer.Option(help="auto, fp32, bf16 or fp16.")] = None,
        prepared: Annotated[Optional[str], typer.Option(help="Prepared dataset folder (default: data.out).")] = None,
        seed: Annotated[Optional[int], typer.Option(help="Seed of weights, noise and data order.")] = None,
        track: Annotated[
            bool, typer.Option("--track/--no-track", help="Log the run to MLflow (MLFLOW_TRACKING_URI or ./mlflow.db).")
        ] = True,
        register: Annotated[
            Optional[str], typer.Option("--register", help="Also register the model under this MLflow name.")
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
        dry_run: DryRunOption = False,
    ) -> None:
        p = load_cli_params(
            params,
            {
                "train.out": out,
                "train.max_steps": max_steps,
                "train.batch_size": batch_size,
                "train.device": device,
                "train.precision": precision,
                "train.prepared": prepared,
                "train.seed": seed,
            },
            profile,
        )
        from productgen.pipeline.steps import for_task

        p = for_task(p, task)
        if dry_run:
            print_config({"train": p.train, spec.section: getattr(p, spec.section)})
            return
        from productgen.pipeline.train import train

        result = train(p, task, resume=resume, show_progress=not quiet, track=track, register=register)
        if result is not None and int(__import__("os").environ.get("RANK", "0")) == 0:
            losses = ", ".join(f"{k} {v:.3f}" for k, v in result.final_losses.items())
            typer.echo(f"trained to step {result.step} ({result.images_per_second:,.0f} img/s at the end; {losses})")
            typer.echo(
                f"weights: {result.out / 'model'}; samples: {result.out / 'samples'}; "
                f"loss curve: {result.out / 'loss_curve.png'}"
            )
            if result.run_id:
                typer.echo(f"MLflow run {result.run_id}: model {result.model_uri}")

    command.__doc__ = f"""Train {spec.summary}. Settings: params.yaml train: and {spec.section}:.

    Checkpoints, sample grids, the loss curve and the weights go to --out (default artifacts/train/{task}).

    Examples:

      productgen train {task} --max-steps 2000

      productgen train {task} --resume --max-steps 4000

      torchrun --nproc_per_node 4 -m productgen train {task} --max-steps 20000
    """
    train_app.command(task, help=command.__doc__)(command)


def _register_train_commands() -> None:
    from productgen.tasks import TASKS

    for name in TASKS:
        _train_command(name)


_register_train_commands()
