"""``productgen metrics ...``: FID and KID between image sets, with the TF-Inception network of published FIDs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from productgen.cli.common import user_errors
from productgen.common.errors import UserError

metrics_app = typer.Typer(
    help="Evaluation metrics for generated images: FID and KID with the standard TF-Inception network.",
    no_args_is_help=True,
)

# Below this many images the FID estimate is strongly biased upward (its covariance is singular below 2049).
SMALL_SET = 2048


def _source(path: Path, split: str) -> tuple[Any, int, str]:
    """A prepared dataset (folder with dataset.json: its ``split``) or a folder of images, checked up front."""
    from productgen.metrics.images import list_images

    if (path / "dataset.json").is_file():
        from productgen.data.dataset import PreparedDataset

        ds = PreparedDataset(path)
        if split not in ds.counts:
            raise UserError(f"unknown split {split!r} (choose from {', '.join(ds.counts)})")
        return ds, ds.counts[split], f"{path} ({split} split)"
    return path, len(list_images(path)), str(path)


@metrics_app.command("fid")
@user_errors
def fid(
    dir_a: Annotated[Path, typer.Argument(help="Folder of images (PNG/JPEG/WebP, recursive), or a prepared dataset.")],
    dir_b: Annotated[Path, typer.Argument(help="Second folder of images, or a prepared dataset.")],
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")] = 50,
    device: Annotated[str, typer.Option(help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N.")] = "auto",
    extractor: Annotated[
        str, typer.Option(help="Feature network: tf-inception (published FIDs) or pt-inception (torch-fidelity).")
    ] = "tf-inception",
    weights: Annotated[
        Optional[Path], typer.Option(help="Weights file for the extractor (default: installed / torch hub cache).")
    ] = None,
    kid: Annotated[bool, typer.Option("--kid", help="Also compute KID (mean and std over subsets).")] = False,
    kid_subsets: Annotated[int, typer.Option(min=1, help="KID: number of subsets.")] = 100,
    kid_subset_size: Annotated[
        int, typer.Option(min=2, help="KID: images per subset (capped at the smaller set).")
    ] = 1000,
    split: Annotated[str, typer.Option(help="Split to use when an argument is a prepared dataset.")] = "test",
    cache_dir: Annotated[
        Optional[Path],
        typer.Option(help="Statistics cache for prepared datasets (default ~/.cache/productgen/fid-stats)."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute prepared-dataset statistics.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")] = False,
) -> None:
    """Print the FID between two sets of images (and KID with --kid), like pytorch-fid's command.

    An argument that is a prepared dataset folder (it holds dataset.json) stands for its --split; its feature
    statistics are cached, keyed by the dataset's content hash and the network.

    Examples:

      productgen metrics fid real_photos/ generated/

      productgen metrics fid artifacts/prepared samples/ --split test --kid --json
    """
    a, n_a, label_a = _source(dir_a, split)
    b, n_b, label_b = _source(dir_b, split)
    for n, label in ((n_a, label_a), (n_b, label_b)):
        if n < 2:
            raise UserError(f"{label}: {n} image(s); FID needs at least 2 (published FIDs use 10,000 or more)")

    from productgen.metrics import compare, dataset_statistics, load_extractor

    net = load_extractor(extractor, device, weights)
    show = not quiet and not json_out

    def stats_or_source(x: Any) -> Any:
        if isinstance(x, Path):
            return x
        return dataset_statistics(
            x,
            split,
            net,
            batch_size=batch_size,
            keep_features=kid,
            cache=not no_cache,
            cache_dir=cache_dir,
            show_progress=show,
        )

    result = compare(
        stats_or_source(a),
        stats_or_source(b),
        kid=kid,
        extractor=net,
        batch_size=batch_size,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        show_progress=show,
    )
    if not quiet and min(n_a, n_b) < SMALL_SET:
        typer.echo(
            f"note: {min(n_a, n_b)} images in the smaller set; FID is biased upward below {SMALL_SET + 1} images "
            "(published FIDs use 10,000 or 50,000), so compare only FIDs of equal set sizes",
            err=True,
        )
    if json_out:
        typer.echo(json.dumps(result.to_dict() | {"a": label_a, "b": label_b, "device": str(net.device)}))
        return
    typer.echo(f"FID: {result.fid:.4f}")
    if result.kid is not None:
        typer.echo(
            f"KID: {result.kid.mean:.6f} ± {result.kid.std:.6f} "
            f"({result.kid.subsets} subsets of {result.kid.subset_size})"
        )
