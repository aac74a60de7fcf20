"""``productgen data ...``: fetch the built-in dataset, prepare, validate, inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from productgen.cli.common import DryRunOption, Params, load_cli_params, print_config, user_errors

data_app = typer.Typer(
    help="Product-image datasets: fetch the built-in one, prepare shards, validate, look at views.",
    no_args_is_help=True,
)


@data_app.command("fetch")
@user_errors
def fetch(
    dest: Annotated[Path, typer.Option(help="Folder to hold the Fashion-MNIST IDX files (DVC-tracked).")] = Path(
        "data/fashion-mnist"
    ),
    download: Annotated[
        bool, typer.Option("--download", help="Fall back to torchvision's download if the Debian package is missing.")
    ] = False,
) -> None:
    """Copy the built-in Fashion-MNIST IDX files from the Debian package (dataset-fashion-mnist) into DEST.

    Example: productgen data fetch --dest data/fashion-mnist
    """
    from productgen.data.fashion_mnist import fetch as do_fetch

    where = do_fetch(dest, download=download)
    typer.echo(f"Fashion-MNIST IDX files in {where}")


@data_app.command("prepare")
@user_errors
def prepare(
    params: Params = None,
    source: Annotated[Optional[str], typer.Option(help="builtin | folder | catalog (default: data.source).")] = None,
    input: Annotated[
        Optional[str],
        typer.Option("--input", "-i", help="builtin: IDX folder; folder: images root; catalog: CSV/Parquet file."),
    ] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder (default: data.out).")] = None,
    image_root: Annotated[Optional[str], typer.Option(help="Catalog: folder image paths are relative to.")] = None,
    image_column: Annotated[Optional[str], typer.Option(help="Catalog: column holding the image path or id.")] = None,
    image_pattern: Annotated[
        Optional[str], typer.Option(help="Catalog: file name pattern for the column value, e.g. 'images/{}.jpg'.")
    ] = None,
    category_column: Annotated[Optional[str], typer.Option(help="Catalog: column holding the category.")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Square output size in pixels (28..256).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="Output colour mode: RGB or L.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the stratified split.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Decode, square-pad and shard product images, and write the manifest and rejected-file list.

    Examples:

      productgen data prepare                      # built-in Fashion-MNIST, settings from params.yaml

      productgen data prepare --source folder -i shop_photos/ -o artifacts/shop --mode RGB --resolution 64

      productgen data prepare --source catalog -i fashion/styles.csv --image-column id
      --image-pattern 'images/{}.jpg' --category-column articleType --mode RGB -o artifacts/fashion
    """
    overrides = {
        "data.source": source,
        "data.input": input,
        "data.out": out,
        "data.image_root": image_root,
        "data.image_column": image_column,
        "data.image_pattern": image_pattern,
        "data.category_column": category_column,
        "data.resolution": resolution,
        "data.mode": mode,
        "data.seed": seed,
    }
    cfg = load_cli_params(params, overrides).data
    if dry_run:
        print_config(cfg)
        return
    from productgen.data.prepare import prepare as do_prepare

    result = do_prepare(cfg, show_progress=not quiet)
    counts = ", ".join(f"{k} {v:,}" for k, v in result.counts.items())
    typer.echo(
        f"prepared {sum(result.counts.values()):,} images ({counts}) in {len(result.classes)} categories -> "
        f"{result.out}; {result.n_rejected:,} rejected (listed in {result.out / 'rejected.csv'}), "
        f"{result.n_ignored:,} non-image files ignored; content hash {result.content_hash[:12]}"
    )


@data_app.command("validate")
@user_errors
def validate(
    params: Params = None,
    prepared: Annotated[
        Optional[Path], typer.Option("--prepared", help="Prepared dataset folder (default: data.out).")
    ] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Report folder (default: validation.out).")] = None,
    dry_run: DryRunOption = False,
) -> None:
    """Check a prepared dataset with Great Expectations against the thresholds in params.yaml.

    Writes report.md, report.html, summary.json, metrics.json and quarantine.csv; exits 1 with a one-line
    summary when a threshold fails, 0 when the dataset passes.

    Example: productgen data validate --prepared artifacts/prepared --out artifacts/validation
    """
    from productgen.common.errors import ValidationFailed

    p = load_cli_params(params, {"validation.out": out})
    if dry_run:
        print_config(p.validation)
        return
    from productgen.data.validate import validate as do_validate

    result = do_validate(prepared or Path(p.data.out), p.validation, p.data)
    if not result.success:
        raise ValidationFailed(result.one_line())
    typer.echo(result.one_line())


@data_app.command("views")
@user_errors
def views(
    params: Params = None,
    prepared: Annotated[Optional[Path], typer.Option("--prepared", help="Prepared dataset folder.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    n: Annotated[int, typer.Option("--n", help="Images per view kind.", min=1, max=64)] = 8,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path("artifacts/views.png"),
) -> None:
    """Save a grid of the paired views (clean, noise, blur, JPEG, 2x/4x downscale, edges) for a few images.

    Example: productgen data views --split test --n 8 --out artifacts/views.png
    """
    import torch

    from productgen.common.grids import make_grid, save_png
    from productgen.data.dataset import PreparedDataset
    from productgen.data.views import make_view, view_kinds

    p = load_cli_params(params, {})
    ds = PreparedDataset(prepared or Path(p.data.out))
    images, _ = ds.tensors(split)
    clean = images[:n]
    kinds = view_kinds(p.views)
    rows = [clean] + [make_view(clean, k, p.views, torch.arange(len(clean))) for k in kinds]
    grid = make_grid(
        torch.cat(rows).numpy(), ncol=len(clean), scale=max(1, 64 // ds.resolution), row_labels=["clean", *kinds]
    )
    typer.echo(f"views grid -> {save_png(grid, out)}")


@data_app.command("export")
@user_errors
def export(
    view: Annotated[str, typer.Option(help="clean, or a view: noise15|noise25|noise50|blur|jpeg|sr2|sr4|edges.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNG files: they go to OUT/VIEW/.")],
    params: Params = None,
    prepared: Annotated[Optional[Path], typer.Option("--prepared", help="Prepared dataset folder.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    n: Annotated[int, typer.Option("--n", help="Number of images (the split's first N).", min=1)] = 32,
    with_clean: Annotated[bool, typer.Option("--with-clean", help="Also write the originals to OUT/clean/.")] = False,
) -> None:
    """Write a view of the prepared images as PNG files: a folder to try enhance, translate and stylize on.

    Examples:

      productgen data export --view noise25 --n 32 --out demo --with-clean

      productgen enhance --in demo/noise25 --out demo/denoised --task denoise --grid demo/grid.png
    """
    from productgen.data.export import export_view

    p = load_cli_params(params, {})
    files = export_view(prepared or Path(p.data.out), split, view, p.views, n, out, with_clean)
    typer.echo(f"{len(files)} {view} images ({split} split) -> {files[0].parent}")


@data_app.command("catalog")
@user_errors
def catalog(
    out: Annotated[Path, typer.Option("--out", "-o", help="Catalog folder: OUT/<category>/<split>-NNNNN.png.")],
    params: Params = None,
    prepared: Annotated[Optional[Path], typer.Option("--prepared", help="Prepared dataset folder.")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "train",
    categories: Annotated[Optional[str], typer.Option(help="Comma-separated categories (default: all).")] = None,
    per_category: Annotated[int, typer.Option("--per-category", help="Images per category.", min=1)] = 80,
    skip: Annotated[int, typer.Option("--skip", help="Leave out each category's first SKIP images.", min=0)] = 0,
) -> None:
    """Write a catalog folder (one subfolder per category) from the prepared images: a shop catalog that grows.

    Examples (the weekly loop in docs/retrain.md):

      productgen data catalog --categories sneaker,bag,trouser --per-category 80 --out shop

      productgen data catalog --categories sneaker,bag,trouser --per-category 80 --skip 80 --out shop   # week 2
    """
    from productgen.data.export import export_catalog

    p = load_cli_params(params, {})
    cats = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    files = export_catalog(prepared or Path(p.data.out), split, cats, per_category, skip, out)
    typer.echo(f"{len(files)} images ({split} split) -> {out}/<category>/")


@data_app.command("info")
@user_errors
def info(
    prepared: Annotated[Path, typer.Argument(help="Prepared dataset folder.")] = Path("artifacts/prepared"),
) -> None:
    """Print what a prepared dataset holds: source, resolution, classes, split sizes, content hash.

    Example: productgen data info artifacts/prepared
    """
    from productgen.data.dataset import PreparedDataset

    ds = PreparedDataset(prepared, verify=False)
    m = ds.meta
    typer.echo(f"{prepared}: {m['source']['description']}")
    typer.echo(f"  {m['resolution']} px {m['mode']}, {len(m['classes'])} classes: {', '.join(m['classes'])}")
    typer.echo("  " + ", ".join(f"{k} {v:,}" for k, v in m["counts"].items()) + f"; {m['n_rejected']:,} rejected")
    typer.echo(f"  content hash {m['content_hash']}")
