"""``productgen enhance``: apply a trained restoration model (denoise, deblur, JPEG clean-up, 2x/4x upscaling)
to a folder of product photos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# --task -> which training views (restore.view / vae.view) a model must have been trained on to do it
from productgen.apply.enhance import ENHANCEMENTS as TASK_VIEWS
from productgen.apply.enhance import enhancement_matches as task_matches
from productgen.cli.common import user_errors
from productgen.common.errors import UserError

DEFAULT_MODEL = Path("artifacts/train/restore/model")


@user_errors
def enhance_command(
    in_dir: Annotated[Path, typer.Option("--in", "-i", help="Folder of images (searched recursively).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder (not inside --in); PNGs, same names.")],
    task: Annotated[
        str, typer.Option("--task", "-t", help="denoise, deblur, jpeg, sr2 or sr4 (must match the model).")
    ],
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            "-m",
            help="Model folder (config.json + safetensors) of "
            "'productgen train restore' or 'train vae-restore' (default: artifacts/train/restore/model, "
            "else the shipped champion champions/restore).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")] = "cpu",
    grid: Annotated[Optional[Path], typer.Option("--grid", help="Also write a before/after grid PNG here.")] = None,
    max_side: Annotated[
        Optional[int], typer.Option("--max-side", help="Shrink larger inputs to this side first.")
    ] = None,
    memory_mb: Annotated[
        float,
        typer.Option(
            "--memory-mb",
            help="Working memory for one forward pass (MB); larger photos run in overlapping tiles that fit it.",
        ),
    ] = 2048,
    exact_tiles: Annotated[
        bool,
        typer.Option(
            "--exact-tiles/--fast-tiles",
            help="Tiles of large images use whole-image "
            "normalisation statistics (same result as one pass, ~6x the work on "
            "the restorer) or their own (one pass, tile-dependent tones).",
        ),
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Enhance every image in a folder with a trained restoration model; inputs are never modified.

    Unreadable files are skipped and listed; outputs keep each input's relative path and name (as .png).
    Photos too large for --memory-mb in one pass are processed in tiles (same result as one pass).

    Examples:

      productgen enhance --in photos/ --out clean/ --task denoise

      productgen enhance --in thumbs/ --out big/ --task sr2 --model artifacts/train/restore-sr2/model --grid ba.png
    """
    from productgen.apply.folders import apply_to_folder, before_after_grid
    from productgen.models.predict import load_predictor
    from productgen.registry.shipped import default_model

    if task not in TASK_VIEWS:
        raise UserError(f"--task: unknown task {task!r}; choose from {', '.join(TASK_VIEWS)}")
    model = model or default_model("restore", DEFAULT_MODEL)
    predictor = load_predictor(model, device)
    view = getattr(predictor, "view", None)
    if view is None:
        raise UserError(
            f"{model}: a {predictor.config.get('model')!r} model is not a restoration model; "
            "pass --model a folder from 'productgen train restore'"
        )
    if not task_matches(task, view):
        raise UserError(
            f"--task {task} needs a model trained on {TASK_VIEWS[task]}, but {model} was trained on "
            f"{view}; pass a matching --model or --task"
        )
    report = apply_to_folder(
        predictor,
        in_dir,
        out_dir,
        batch_size=batch_size,
        max_side=max_side,
        device=device,
        show_progress=not quiet,
        memory_mb=memory_mb,
        exact_tiles=exact_tiles,
    )
    typer.echo(
        f"{len(report.written)} written to {out_dir}, {len(report.failed)} failed "
        f"({predictor.config.get('model')} model, {view})"
    )
    for path, reason in report.failed:
        typer.echo(f"  failed: {path}: {reason}")
    for path, reason in report.skipped:
        typer.echo(f"  skipped: {path}: {reason}")
    if report.tiled:
        typer.echo(f"  {len(report.tiled)} large image(s) processed in tiles (--memory-mb {memory_mb:g})")
    if grid is not None:
        if before_after_grid(report.pairs, grid) is not None:
            typer.echo(f"before/after grid: {grid}")
    if not report.written:
        raise UserError(f"{in_dir}: no image could be read; nothing was written")
