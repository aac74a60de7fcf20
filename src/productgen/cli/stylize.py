"""``productgen stylize``: apply a style to a folder of product photos.

Two ways to pick the look: ``--style`` (a built-in style name or a JPEG/PNG) with an arbitrary-style AdaIN
model (default ``artifacts/train/adain/model``), or ``--model`` alone with a model that has its look built in
(a per-style network from ``productgen train style``, or any image -> image model such as pix2pix/CycleGAN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from productgen.cli.common import user_errors

DEFAULT_ADAIN = Path("artifacts/train/adain/model")
# productgen.models.styles.BUILTIN_STYLES, spelled out so --help does not import torch (a test keeps them in sync)
BUILTIN = (
    "hubble_deep_field",
    "immunohistochemistry",
    "coffee",
    "rocket",
    "astronaut",
    "chelsea",
    "retina",
    "brick",
    "grass",
    "gravel",
)


def stylize_command(
    in_dir: Annotated[
        Path, typer.Option("--in", help="Folder of product photos (JPEG/PNG/WebP, searched recursively).")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder (PNG per input, same relative path).")],
    style: Annotated[
        Optional[str],
        typer.Option(
            "--style", "-s", help=f"A JPEG/PNG path or a built-in style: {', '.join(BUILTIN)}. Needs an AdaIN model."
        ),
    ] = None,
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model",
            "-m",
            help="Model folder or MLflow URI (models:/productgen-adain@champion): AdaIN (with --style), a per-style network "
            "or any image -> image model (without --style).",
        ),
    ] = None,
    alpha: Annotated[
        Optional[float],
        typer.Option(help="AdaIN only: style strength, 0 (content) .. 1 (full style).", min=0.0, max=1.0),
    ] = None,
    size: Annotated[
        int, typer.Option("--size", help="Images with a longer side above this (px) are shrunk to it first.", min=16)
    ] = 512,
    preserve_product: Annotated[
        Optional[bool],
        typer.Option(
            "--preserve-product/--no-preserve-product",
            help="Stylise only the product and keep the white background (default: as trained).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.", min=1)] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the network first: 2.5-6x faster on a GPU at 512 px, "
            "after a compile of tens of seconds per image size (for large folders).",
        ),
    ] = False,
    grid: Annotated[Optional[Path], typer.Option("--grid", help="Also write a before/after grid PNG here.")] = None,
    memory_mb: Annotated[
        float,
        typer.Option(
            "--memory-mb",
            help="Working memory for one forward pass (MB); batches shrink to fit it, larger images run in tiles.",
        ),
    ] = 2048,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Stylise every product photo in a folder; unreadable files are reported and skipped, inputs are never touched.

    Examples:

      productgen stylize --in photos/ --out styled/ --style hubble_deep_field --alpha 0.8 --grid grid.png

      productgen stylize --in photos/ --out styled/ --style my_pattern.jpg --model artifacts/train/adain/model

      productgen stylize --in photos/ --out styled/ --model artifacts/train/style/model --size 256

      productgen stylize --in catalog/ --out styled/ --model productgen-style --device cuda --compile --batch-size 32
    """
    import torch

    from productgen.apply.folders import apply_to_folder, before_after_grid
    from productgen.common.errors import UserError
    from productgen.models.predict import load_predictor
    from productgen.tasks import for_model
    from productgen.training.device import pick_device

    if style is None and model is None:
        raise UserError("pass --style STYLE (with an AdaIN model) or --model MODEL_DIR (a per-style or image model)")
    if model is None:
        from productgen.registry.shipped import default_model

        model = default_model("adain", DEFAULT_ADAIN)
        if not (model / "config.json").is_file():
            raise UserError(
                f"{model}: no AdaIN model for --style; train it with: productgen train adain "
                "(or pass --model an AdaIN model folder)"
            )
    try:
        dev = pick_device(device)
    except UserError as err:
        raise UserError(str(err).replace("train.device", "--device")) from None
    predictor = load_predictor(model, dev)
    if compile_model:
        from productgen.models.predict import compile_predictor

        compile_predictor(predictor)
    kind = predictor.config.get("model")
    spec = for_model(str(kind))
    options: dict[str, object] = {}
    if spec is not None and spec.style_input:
        if style is None:
            raise UserError(f"--style: {model} is an AdaIN model; give a built-in style name or a JPEG/PNG path")
        from productgen.models.styles import load_style

        arr = load_style(style)
        options["style"] = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].contiguous()
        if alpha is not None:
            options["alpha"] = alpha
    else:
        if style is not None:
            raise UserError(
                f"--style: {model} holds a {kind!r} model with its look built in; drop --style, or pass "
                "--model an AdaIN model folder"
            )
        if alpha is not None:
            raise UserError(f"--alpha: only AdaIN models blend styles; {model} holds a {kind!r} model")
    if preserve_product is not None:
        if spec is None or not spec.preserves_product:
            raise UserError(
                f"--preserve-product: only style-transfer models mask the product; {model} holds a {kind!r} model"
            )
        options["preserve_product"] = preserve_product
    report = apply_to_folder(
        predictor,
        in_dir,
        out_dir,
        batch_size=batch_size,
        max_side=size,
        device=dev,
        show_progress=not quiet,
        memory_mb=memory_mb,
        **options,
    )
    for path, reason in report.failed + report.skipped:
        typer.echo(f"skipped {path}: {reason}", err=True)
    typer.echo(
        f"{len(report.written)} images stylised -> {out_dir}"
        + (f"; {len(report.failed)} skipped" if report.failed else "")
    )
    if grid is not None:
        written = before_after_grid(report.pairs, grid)
        if written is not None:
            typer.echo(f"before/after grid: {written}")
    if not report.written:
        raise UserError(f"{in_dir}: none of the {len(report.failed)} images could be read")


stylize_cmd = user_errors(stylize_command)
