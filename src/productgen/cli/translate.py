"""``productgen translate``: apply a trained pix2pix or CycleGAN model to a folder of images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from productgen.cli.common import user_errors
from productgen.common.errors import UserError


def translate_command(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            "-m",
            help="Model folder written by 'productgen train pix2pix' or 'train cyclegan', or an MLflow URI (models:/productgen-pix2pix@champion).",
        ),
    ],
    in_dir: Annotated[
        Path, typer.Option("--in", "-i", help="Folder of images (searched recursively; never modified).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: same relative paths, as PNG.")],
    direction: Annotated[str, typer.Option("--direction", help="ab (A -> B) or ba (B -> A; CycleGAN only).")] = "ab",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, mps or auto.")] = "cpu",
    grid: Annotated[Optional[Path], typer.Option("--grid", help="Also write a before/after grid PNG here.")] = None,
    size: Annotated[
        Optional[int],
        typer.Option(
            "--size",
            help="Downscale inputs so the longer side is at most N px "
            "(models work best near their training resolution).",
        ),
    ] = None,
    memory_mb: Annotated[
        float,
        typer.Option(
            "--memory-mb",
            help="Working memory for one forward pass (MB); larger images run in overlapping tiles that fit it.",
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
    """Translate every image of a folder with a trained pix2pix or CycleGAN model.

    pix2pix maps its source view to products (a sketch -> product model takes dark-on-white line drawings);
    CycleGAN maps domain A to B (--direction ba: B to A). Unreadable files are reported and skipped.

    Example: productgen translate --model artifacts/train/pix2pix/model --in sketches/ --out products/ --grid grid.png
    """
    from productgen.apply.folders import apply_to_folder, before_after_grid
    from productgen.metrics.extractors import resolve_device
    from productgen.models.predict import load_predictor
    from productgen.tasks import for_model

    if direction not in ("ab", "ba"):
        raise UserError(f"--direction: {direction!r} is not ab or ba")
    if size is not None and size < 8:
        raise UserError(f"--size: {size} is too small; give at least 8 px")
    dev = resolve_device(device)
    predictor = load_predictor(model, dev)
    spec = for_model(str(predictor.config.get("model")))
    if direction == "ba" and not (spec is not None and spec.reversible):
        raise UserError(
            f"--direction ba: {model} holds a {predictor.config.get('model')} model, which translates one "
            "way only; use --direction ab"
        )
    report = apply_to_folder(
        predictor,
        in_dir,
        out,
        batch_size=batch_size,
        max_side=size,
        device=dev,
        show_progress=not quiet,
        memory_mb=memory_mb,
        exact_tiles=exact_tiles,
        direction=direction,
    )
    for path, reason in report.failed + report.skipped:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if grid is not None and before_after_grid(report.pairs, grid) is not None:
        typer.echo(f"before/after grid: {grid}")
    typer.echo(f"{len(report.written)} written to {out}, {len(report.failed)} failed")
    if not report.written:
        raise typer.Exit(1)


translate_cmd = user_errors(translate_command)
