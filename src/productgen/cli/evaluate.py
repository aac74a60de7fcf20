"""``productgen evaluate``: FID, KID, per-category FID and discriminator accuracy of a trained generator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from productgen.cli.common import DryRunOption, Params, Profile, load_cli_params, print_config, user_errors


@user_errors
def evaluate_cmd(
    params: Params = None,
    profile: Profile = None,
    task: Annotated[
        str,
        typer.Option(
            "--task",
            "-t",
            help="Model task (the task registry's): gan, vae, restore, "
            "vae-restore, pix2pix, cyclegan, style, adain (decides the protocol).",
        ),
    ] = "gan",
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Model folder (default: evaluate.model).")
    ] = None,
    prepared: Annotated[Optional[Path], typer.Option(help="Prepared dataset (default: data.out).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder (default: evaluate.out).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Real split to compare with (default: test).")] = None,
    num_fake: Annotated[Optional[int], typer.Option(help="Generated images (default: as many as real).")] = None,
    max_real: Annotated[Optional[int], typer.Option(help="Use a seeded subset of the real split.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    kid: Annotated[Optional[bool], typer.Option("--kid/--no-kid", help="Also compute KID.")] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log an MLflow evaluation run.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Evaluate a trained model on held-out images; writes metrics.json, report.md and image grids to --out.

    Generators (gan, vae): FID, KID, per-category FID, discriminator accuracy. Restorers: PSNR / SSIM next to the
    degraded input. pix2pix: PSNR / SSIM / FID; cyclegan: FID. Style models: style distance, content SSIM.

    Examples:

      productgen evaluate --model artifacts/train/gan/model

      productgen evaluate --task restore --model artifacts/train/restore/model --out artifacts/eval/restore

      productgen evaluate --max-real 1000 --num-fake 1000 --device cpu    # a quick look on a CPU
    """
    p = load_cli_params(
        params,
        {
            "evaluate.model": model,
            "evaluate.out": out,
            "evaluate.split": split,
            "evaluate.num_fake": num_fake,
            "evaluate.max_real": max_real,
            "evaluate.device": device,
            "evaluate.kid": kid,
        },
        profile,
    )
    if dry_run:
        print_config(p.evaluate)
        return
    from productgen.pipeline.steps import evaluate_model, for_task

    p = for_task(p, task)
    m = evaluate_model(p, prepared, track=track, show_progress=not quiet, task=task)
    from productgen.tasks import get

    spec = get(task)
    if not spec.generates:
        metric, better = spec.metric, spec.direction
        shown = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if isinstance(v, float))
        typer.echo(f"{metric} {m[metric]:.4g} ({better} is better); {shown}")
        typer.echo(f"report: {Path(p.evaluate.out) / 'report.md'}; metrics: {Path(p.evaluate.out) / 'metrics.json'}")
        return
    d_acc = f", discriminator accuracy {100 * m['d_acc']:.1f}%" if "d_acc" in m else ""
    kid_text = f", KID {m['kid_mean']:.4f} +- {m['kid_std']:.4f}" if "kid_mean" in m else ""
    typer.echo(f"FID {m['fid']:.2f}{kid_text}{d_acc} ({m['n_real']:,} real vs {m['n_fake']:,} generated)")
    typer.echo(f"report: {Path(p.evaluate.out) / 'report.md'}; metrics: {Path(p.evaluate.out) / 'metrics.json'}")
