"""Per-category helpers shared by every evaluator: which images to score, and figures grouped by category."""

from __future__ import annotations

from typing import Any


def category_mask(classes: list[str], labels: Any, categories: list[str] | None) -> Any:
    """Boolean mask of the images whose category is in ``categories`` (all of them when None)."""
    import torch

    if categories is None:
        return torch.ones(len(labels), dtype=torch.bool)
    from productgen.common.errors import UserError

    unknown = sorted(set(categories) - set(classes))
    if unknown:
        raise UserError(f"categories: {', '.join(unknown)} not in the dataset (it has {', '.join(classes)})")
    wanted = torch.tensor([classes.index(c) for c in categories], dtype=labels.dtype)
    return torch.isin(labels, wanted)


def group_by_category(classes: list[str], labels: Any, **per_image: Any) -> dict[str, dict[str, float]]:
    """Mean of each per-image tensor per category, with the image count ``n``."""
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(classes):
        sel = labels == c
        n = int(sel.sum())
        if n:
            out[name] = {k: float(v[sel].double().mean()) for k, v in per_image.items()} | {"n": n}
    return out
