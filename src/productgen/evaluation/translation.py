"""Evaluation of image-to-image translation models (pix2pix, CycleGAN) on a split of the prepared dataset.

- pix2pix has ground truth: PSNR and SSIM of its outputs against the clean images, next to the same numbers
  for the untranslated input (for edges that baseline is poor by design; for blur or sr4 it is the bar a
  restorer must clear), plus the FID of the outputs against the real images of the split (realism, which L1
  alone does not reward). Primary metric: ``psnr`` (higher is better).
- CycleGAN has no pairs: FID of G_AB(A) against the real B images, and the FID of the untranslated A images
  against B (the identity baseline), so the gain is visible; plus how well G_BA undoes G_AB (cycle PSNR and
  SSIM). Primary metric: ``fid`` (lower is better).
- KID with its spread next to each FID (``kid_mean`` / ``kid_std``, ``kid_identity_*`` for CycleGAN): a win is
  worth shipping only when it is larger than the noise, and FID alone has no error bar. The subsets hold at most
  half of the smaller set, so they differ and their spread measures something (subsets as large as the set are
  all the same images: a spread of zero that means nothing).

Views are computed with each image's index in its split, so pix2pix inputs are the pairs every evaluation
(and the restoration models) use. Writes ``metrics.json``, ``report.md`` and ``before_after.png``.
FID with TF-Inception runs at about 5 images/s on a CPU: use ``max_images`` (a seeded subset) there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from productgen.common import atomic
from productgen.common.errors import UserError
from productgen.config import ViewsConfig, from_dict


def _subset(n: int, max_images: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded subset (all of them when ``max_images`` is None or not smaller)."""
    if max_images is None or max_images >= n:
        return torch.arange(n)
    if max_images < 1:
        raise UserError(f"max_images: {max_images} must be at least 1")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_images].sort().values


def _apply(
    predictor: Any, images: torch.Tensor, batch_size: int, show_progress: bool, direction: str = "ab"
) -> torch.Tensor:
    from productgen.common.progress import progress

    starts = range(0, len(images), batch_size)
    parts = [
        predictor(images[i : i + batch_size], direction=direction)
        for i in progress(starts, desc=f"translate {direction}", unit="batch", enabled=show_progress)
    ]
    return torch.cat(parts) if parts else images[:0].clone()


def _quality(pred: torch.Tensor, target: torch.Tensor, batch_size: int, per_image: bool = False) -> Any:
    """Mean PSNR and SSIM over images (batched, so a 10,000-image split fits in memory); with ``per_image``, also
    the per-image values ``(psnr, ssim)``."""
    from productgen.metrics.quality import psnr, ssim

    p = torch.cat(
        [
            psnr(pred[i : i + batch_size], target[i : i + batch_size], per_image=True)
            for i in range(0, len(pred), batch_size)
        ]
    )
    s = torch.cat(
        [
            ssim(pred[i : i + batch_size], target[i : i + batch_size], per_image=True)
            for i in range(0, len(pred), batch_size)
        ]
    )
    if per_image:
        return (float(p.mean()), float(s.mean())), (p, s)
    return float(p.mean()), float(s.mean())


def _grid(rows: list[torch.Tensor], labels: list[str], path: Path) -> Path:
    from productgen.common.grids import make_grid, save_png

    k = min(8, *(len(r) for r in rows))
    images = np.concatenate([r[:k].numpy() for r in rows])
    return save_png(make_grid(images, ncol=k, scale=max(1, 64 // images.shape[-1]), row_labels=labels), path)


def evaluate_translation(
    model_dir: Path,
    prepared: str | Path,
    split: str = "test",
    views_cfg: ViewsConfig | None = None,
    out: Path = Path("artifacts/eval/translate"),
    max_images: int | None = None,
    fid: bool = True,
    extractor: str = "tf-inception",
    batch_size: int = 100,
    device: str = "cpu",
    seed: int = 0,
    show_progress: bool = False,
    categories: list[str] | None = None,
    kid_subset_size: int | None = 1000,
) -> dict[str, Any]:
    """Evaluate the pix2pix or CycleGAN model in ``model_dir`` on ``split`` of ``prepared``; write and return metrics.

    ``views_cfg``: the views that make pix2pix inputs; None uses the ones recorded at training (so a model
    trained on edges with another threshold is judged on its own kind of sketch). ``max_images``: a subset
    seeded by ``seed`` (per domain for CycleGAN). ``fid=False`` skips the feature network (fast checks).
    ``categories``: pix2pix only, score on those categories of the split (CycleGAN's are its two domains).
    ``kid_subset_size``: the largest KID subset (None: no KID).
    """
    from productgen.data.dataset import PreparedDataset
    from productgen.metrics.extractors import resolve_device
    from productgen.models.io import read_config
    from productgen.models.predict import load_predictor
    from productgen.tasks import for_model

    if batch_size < 1:
        raise UserError(f"batch_size: {batch_size} must be at least 1")
    mcfg = read_config(Path(model_dir))
    kind = mcfg.get("model")
    spec = for_model(str(kind))
    if spec is None or not spec.translates:
        raise UserError(f"{model_dir}: holds a {kind!r} model; evaluate_translation takes pix2pix or cyclegan models")
    ds = PreparedDataset(prepared)
    if int(mcfg["channels"]) != ds.channels:
        raise UserError(
            f"{model_dir}: trained on {mcfg['channels']}-channel images, but {prepared} has "
            f"{ds.channels}; evaluate it against a dataset of the same mode"
        )
    dev = resolve_device(device)
    predictor = load_predictor(Path(model_dir), dev)
    out = Path(out)
    metrics: dict[str, Any] = {"model": kind, "split": split}
    if spec.paired:
        views = views_cfg or from_dict(ViewsConfig, mcfg.get("views") or {}, f"{model_dir}/config.json views")
        rows, labels, sets = _eval_pix2pix(
            predictor,
            ds,
            split,
            views,
            mcfg["source_view"],
            max_images,
            seed,
            batch_size,
            show_progress,
            metrics,
            categories,
        )
    else:
        rows, labels, sets = _eval_cyclegan(
            predictor, ds, split, mcfg, max_images, seed, batch_size, show_progress, metrics
        )
        metrics["per_category"] = {}  # one category is translated into another: the domains are the breakdown
    if fid:
        from productgen.metrics import compare, compute_statistics, get_extractor

        net = get_extractor(extractor, device)
        # CycleGAN's two FIDs share the real B set: its features are computed once (same numbers, a third less time)
        stats: dict[int, Any] = {}

        def stats_of(x: torch.Tensor) -> Any:
            if id(x) not in stats:
                stats[id(x)] = compute_statistics(
                    x,
                    net,
                    batch_size=batch_size,
                    keep_features=kid_subset_size is not None,
                    show_progress=show_progress,
                )
            return stats[id(x)]

        for name, (a, b) in sets.items():
            if min(len(a), len(b)) < 2:
                raise UserError(
                    f"{prepared}: FID needs at least 2 images per set ({name}: {len(a)} vs {len(b)}); "
                    "raise max_images or pass fid=False"
                )
            sa, sb = stats_of(a), stats_of(b)
            kid = kid_subset_size is not None
            size = _kid_subset_size(kid_subset_size, sa.n, sb.n) if kid_subset_size is not None else 0
            c = compare(sa, sb, extractor=net, kid=kid, kid_subset_size=size)
            metrics[name] = c.fid
            if c.kid is not None:  # kid_mean / kid_std for fid, kid_identity_* for fid_identity
                prefix = name.replace("fid", "kid", 1)
                metrics |= {f"{prefix}_mean": c.kid.mean, f"{prefix}_std": c.kid.std, f"{prefix}_subset_size": size}
        if "fid_identity" in metrics:
            metrics["fid_gain"] = metrics["fid_identity"] - metrics["fid"]
            if "kid_identity_mean" in metrics:
                gain = metrics["kid_identity_mean"] - metrics["kid_mean"]
                noise = float(np.hypot(metrics["kid_std"], metrics["kid_identity_std"]))
                metrics["kid_gain"] = gain
                metrics["kid_gain_sigmas"] = gain / noise if noise > 0 else None
        metrics["extractor"] = {"name": net.name, "sha": net.sha}
    name, direction = spec.metric, spec.direction
    metrics["primary_metric"] = {"name": name, "direction": direction}
    out.mkdir(parents=True, exist_ok=True)
    _grid(rows, labels, out / "before_after.png")
    atomic.write_json(out / "metrics.json", metrics)
    atomic.write_text(
        out / "report.md", _report(metrics, Path(model_dir), Path(prepared), ds.content_hash, bool(spec.paired))
    )
    return metrics


def _eval_pix2pix(
    predictor: Any,
    ds: Any,
    split: str,
    views: ViewsConfig,
    kind: str,
    max_images: int | None,
    seed: int,
    batch_size: int,
    show_progress: bool,
    metrics: dict[str, Any],
    categories: list[str] | None = None,
) -> tuple[list[torch.Tensor], list[str], dict[str, Any]]:
    from productgen.data.views import make_view
    from productgen.evaluation.categories import category_mask, group_by_category

    images, labels = ds.tensors(split)
    if len(images) == 0:
        raise UserError(f"{ds.root}: the {split} split holds no images")
    chosen = torch.nonzero(category_mask(ds.classes, labels, categories)).flatten()
    if len(chosen) == 0:
        raise UserError(f"{ds.root}: the {split} split has no images of {', '.join(categories or [])}")
    idx = chosen[_subset(len(chosen), max_images, seed)]
    clean = images[idx]
    src = torch.cat(
        [make_view(clean[i : i + 1024], kind, views, idx[i : i + 1024]) for i in range(0, len(clean), 1024)]
    )
    pred = _apply(predictor, src, batch_size, show_progress)
    (p, s), pp = _quality(pred, clean, batch_size, per_image=True)
    (p0, s0), pp0 = _quality(src, clean, batch_size, per_image=True)
    metrics.update(
        {
            "source_view": kind,
            "n_images": len(clean),
            "psnr": p,
            "ssim": s,
            "input_psnr": p0,
            "input_ssim": s0,
            "gain_db": p - p0,
        }
    )
    metrics["per_category"] = group_by_category(
        ds.classes, labels[idx], psnr=pp[0], ssim=pp[1], input_psnr=pp0[0], gain_db=pp[0].double() - pp0[0].double()
    )
    if categories is not None:
        metrics["categories"] = sorted(categories)
    return [src, pred, clean], ["input", "output", "target"], {"fid": (pred, clean)}


def _domain(ds: Any, split: str, domains: dict[str, Any], side: str, resolution: int, channels: int) -> torch.Tensor:
    if domains.get("kind") == "folders":
        from productgen.training.translate_task import load_folder

        return load_folder(domains[side], resolution, channels, f"folder_{side}")[0]
    images, labels = ds.tensors(split)
    name = domains[side]
    if name not in ds.classes:
        raise UserError(
            f"{ds.root}: has no category {name!r} (the model's domain {side.upper()}); evaluate it "
            "against the dataset it was trained on"
        )
    x = images[labels == ds.classes.index(name)]
    if len(x) == 0:
        raise UserError(f"{ds.root}: the {split} split has no {name!r} images")
    return x


def _eval_cyclegan(
    predictor: Any,
    ds: Any,
    split: str,
    mcfg: dict[str, Any],
    max_images: int | None,
    seed: int,
    batch_size: int,
    show_progress: bool,
    metrics: dict[str, Any],
) -> tuple[list[torch.Tensor], list[str], dict[str, Any]]:
    domains = mcfg["domains"]
    res, ch = int(mcfg["resolution"]), int(mcfg["channels"])
    a = _domain(ds, split, domains, "a", res, ch)
    b = _domain(ds, split, domains, "b", res, ch)
    if domains.get("kind") != "folders" and ds.resolution != res:
        raise UserError(f"{ds.root}: {ds.resolution} px images, the model was trained on {res} px")
    a, b = a[_subset(len(a), max_images, seed)], b[_subset(len(b), max_images, seed + 1)]
    ab = _apply(predictor, a, batch_size, show_progress, "ab")
    aba = _apply(predictor, ab, batch_size, show_progress, "ba")
    p, s = _quality(aba, a, batch_size)
    metrics.update(
        {
            "domain_a": domains["a"],
            "domain_b": domains["b"],
            "domains_from": domains.get("kind"),
            "n_a": len(a),
            "n_b": len(b),
            "cycle_psnr": p,
            "cycle_ssim": s,
        }
    )
    return [a, ab, aba], ["A", "A->B", "A->B->A"], {"fid": (ab, b), "fid_identity": (a, b)}


def _kid_subset_size(max_subset: int, n_a: int, n_b: int) -> int:
    """At most half the smaller set, so KID's subsets differ and their spread means something."""
    if max_subset < 2:
        raise UserError(f"evaluate.kid_subset_size: {max_subset} must be at least 2")
    return max(2, min(max_subset, n_a // 2, n_b // 2))


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _report(m: dict[str, Any], model_dir: Path, prepared: Path, content_hash: str, paired: bool) -> str:
    """``paired``: a pix2pix-like model scored against targets; otherwise CycleGAN-like, between two domains."""
    name, direction = m["primary_metric"]["name"], m["primary_metric"]["direction"]
    lines = [
        f"# Translation evaluation of `{model_dir}` ({m['model']})",
        "",
        f"- Dataset `{prepared}` (content hash `{content_hash[:16]}`), split `{m['split']}`",
    ]
    if paired:
        lines += [
            f"- {m['n_images']:,} images; input: the `{m['source_view']}` view, target: the clean image",
            "",
            "| | PSNR (dB) | SSIM |",
            "|---|---|---|",
            f"| model output | {m['psnr']:.2f} | {m['ssim']:.4f} |",
            f"| untranslated input | {m['input_psnr']:.2f} | {m['input_ssim']:.4f} |",
        ]
        if "fid" in m:
            lines += ["", f"FID of the outputs vs the real images: **{m['fid']:.2f}** (lower is better)"]
        if "kid_mean" in m:
            lines += [f"KID x 1000: {1000 * m['kid_mean']:.2f} +- {1000 * m['kid_std']:.2f}"]
    else:
        lines += [
            f"- {m['domains_from']}: A = `{m['domain_a']}` ({m['n_a']:,} images), "
            f"B = `{m['domain_b']}` ({m['n_b']:,} images)",
            "",
        ]
        if "fid" in m and "kid_identity_mean" in m:
            lines += [
                f"| vs real B | FID | KID x 1000 (+- std over {m['kid_subset_size']}-image subsets) |",
                "|---|---|---|",
                f"| G_AB(A) | **{m['fid']:.2f}** | {1000 * m['kid_mean']:.2f} +- {1000 * m['kid_std']:.2f} |",
                f"| A untranslated (identity baseline) | {m['fid_identity']:.2f} | "
                f"{1000 * m['kid_identity_mean']:.2f} +- {1000 * m['kid_identity_std']:.2f} |",
                f"| gain | {m['fid_gain']:.2f} | {1000 * m['kid_gain']:.2f}"
                + (f" ({m['kid_gain_sigmas']:.1f} sigma) |" if m.get("kid_gain_sigmas") is not None else " |"),
                "",
            ]
        elif "fid" in m:
            lines += [
                "| FID vs real B | value |",
                "|---|---|",
                f"| G_AB(A) | **{m['fid']:.2f}** |",
                f"| A untranslated (identity baseline) | {m['fid_identity']:.2f} |",
                f"| gain | {m['fid_gain']:.2f} |",
                "",
            ]
        lines += [f"Cycle consistency A -> B -> A: PSNR {m['cycle_psnr']:.2f} dB, SSIM {m['cycle_ssim']:.4f}"]
    shown = m.get(name)
    lines += [
        "",
        f"Primary metric for the registry gate: `{name}` ({direction} is better)"
        + (f" = {_fmt(shown)}" if shown is not None else " (not computed: run with FID)"),
        "",
        "`before_after.png`: rows " + ("input / output / target" if paired else "A / G_AB(A) / G_BA(G_AB(A))"),
        "",
    ]
    if "extractor" in m:
        lines.append(f"FID features: {m['extractor']['name']} (`{m['extractor']['sha'][:12]}`)")
    return "\n".join(lines) + "\n"
