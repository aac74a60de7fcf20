"""``productgen generate``: new product images of chosen categories from a trained GAN, as a grid and PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from productgen.cli.common import user_errors


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
