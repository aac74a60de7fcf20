"""``productgen train`` and ``productgen generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from productgen.cli.common import DryRunOption, print_config, user_errors
from productgen.cli.data import Params, Profile, _load

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
        p = _load(
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


def generate_command(
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            "-m",
            help="Model folder written by training "
            "(default: artifacts/train/gan/model, else the shipped champion champions/gan).",
        ),
    ] = None,
    category: Annotated[
        Optional[list[str]], typer.Option("--category", "-c", help="Category name (repeatable); default: all.")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Images per category.")] = 8,
    seed: Annotated[int, typer.Option(help="Noise seed; same seed, same images.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Grid PNG to write.")] = Path("artifacts/generated.png"),
    folder: Annotated[Optional[Path], typer.Option("--folder", help="Also write one PNG per image here.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
) -> None:
    """Generate new product images of the given categories with a trained GAN.

    Example: productgen generate --category sneaker --n 64 --seed 0 --out grid.png --folder generated/
    """
    from productgen.apply.generation import generate, save_images
    from productgen.common.grids import make_grid, save_png
    from productgen.registry.shipped import default_model

    model = model or default_model("gan", Path("artifacts/train/gan/model"))

    images, labels, classes = generate(model, category, n, seed, device)
    ncol = 8 if n % 8 == 0 or n > 8 else n
    save_png(make_grid(images, ncol=ncol, scale=max(1, 64 // images.shape[-1])), out)
    typer.echo(f"{len(images)} images -> grid {out}")
    if folder is not None:
        typer.echo(f"{save_images(images, labels, classes, folder)} PNGs -> {folder}")


generate_cmd = user_errors(generate_command)
