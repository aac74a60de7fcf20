"""The review of a challenger that waits for approval (``registry.approval: required``), beside the champion.

What a person needs to answer: the same inputs through both models. A generator
(:attr:`~productgen.tasks.TaskSpec.generates`) samples the very same seeds per category from the champion and the
challenger (:func:`productgen.web.work.generate_arrays`, what the Generate page runs); an image -> image model gets
the same few photos of the prepared test split (in the view the model was trained on: a restorer's degradation, a
paired translator's source view) through both (:func:`productgen.web.work.apply_model`, what the other pages run).
The figures come from :func:`productgen.registry.approval.waiting` (per category, drift summary, lineage).

The images are computed once per (model, champion version, challenger version) and kept in memory as ``data:``
URIs (the page's CSP allows them), so reloading the Models page costs nothing.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from productgen.web import work
from productgen.web.champions import Champion

SEEDS = 6  # samples per category and model
PHOTOS = 4  # test photos through both image models
MIN_SIDE = 64  # small images are scaled up (nearest) to at least this height, so a person can see them


@dataclass
class Row:
    label: str
    cells: list[str]  # data: URIs, one per column


@dataclass
class Comparison:
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    note: str | None = None


def data_uri(array: np.ndarray) -> str:
    scale = max(1, MIN_SIDE // max(1, array.shape[0]))
    if scale > 1:
        array = np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)
    return "data:image/png;base64," + base64.b64encode(work.png_bytes(array)).decode()


def strip(images: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` side by side with a 2 px white gap."""
    gap = np.full((images.shape[1], 2, images.shape[3]), 255, np.uint8)
    parts: list[np.ndarray] = []
    for i, img in enumerate(images):
        parts.extend([gap, img] if i else [img])
    return np.concatenate(parts, axis=1)


def rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def sample_comparison(champion: Champion, challenger: Champion, seed: int = 0) -> Comparison:
    """Per category: ``SEEDS`` samples from each model, the same seed for both."""
    out = Comparison([f"champion v{champion.version}", f"challenger v{challenger.version}"])
    shared = [c for c in champion.classes if c in challenger.classes]
    for category in shared:
        cells = [data_uri(strip(work.generate_arrays(m, category, SEEDS, seed)[1])) for m in (champion, challenger)]
        out.rows.append(Row(category, cells))
    missing = sorted(set(champion.classes) ^ set(challenger.classes))
    if missing:
        out.note = f"categories only one of them generates: {', '.join(missing)}"
    out.note = (out.note + "; " if out.note else "") + f"seeds {seed}..{seed + SEEDS - 1} for both models"
    return out


def input_view(model: Champion) -> str | None:
    """The view an image model was trained on, from the model itself: a restorer's degradation, a paired
    translator's ``source_view``; None: it takes photos as they are."""
    view = getattr(model.model, "view", None)
    if view:
        return str(view)
    if model.spec.paired:
        return (model.config.get("translate") or {}).get("source_view")
    return None


def test_photos(params: Any, channels: int) -> tuple[list[tuple[str, np.ndarray]], str | None]:
    """Up to ``PHOTOS`` images of the prepared evaluation split (``data.out``, ``evaluate.split``), one per
    category first; a note instead when there is none here."""
    from productgen.common.errors import UserError
    from productgen.data.dataset import PreparedDataset

    root = Path(params.data.out)
    split = params.evaluate.split
    try:
        ds = PreparedDataset(root)
        images, labels = ds.arrays(split)
    except (UserError, OSError, ValueError) as err:
        return [], f"no test photos to compare: the prepared dataset at {root} cannot be read here ({err})"
    picked: list[int] = []
    for label in dict.fromkeys(labels.tolist()):
        picked.append(int(np.flatnonzero(labels == label)[0]))
    picked = (picked + [i for i in range(len(images)) if i not in picked])[:PHOTOS]
    photos = []
    for i in picked:
        img = images[i]
        if img.shape[-1] != channels:
            img = img.mean(axis=-1, keepdims=True).astype(np.uint8) if channels == 1 else rgb(img)
        photos.append((f"{split} #{i} ({ds.classes[int(labels[i])]})", img))
    return photos, None


def options_for(model: Champion, params: Any) -> dict[str, Any]:
    """What applying the model needs besides the photo: a style image for a model that takes one (the first
    bundled style, the same for both)."""
    if not model.spec.style_input:
        return {}
    import torch

    from productgen.models.styles import style_names

    arr = work.style_array(style_names()[0], None, params.data.max_pixels)
    return {"style": torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].contiguous()}


def photo_comparison(champion: Champion, challenger: Champion, params: Any) -> Comparison:
    """The same test photos (in the champion's input view) through both models."""
    import torch

    from productgen.data.views import make_view

    view = input_view(champion)
    out = Comparison([f"input{f' ({view})' if view else ''}", f"champion v{champion.version}"])
    out.columns.append(f"challenger v{challenger.version}")
    photos, out.note = test_photos(params, int(champion.model.channels))
    if not photos:
        return out
    inputs = [p for _, p in photos]
    if view:
        batch = torch.from_numpy(np.stack(inputs)).permute(0, 3, 1, 2).contiguous()
        inputs = list(make_view(batch, view, params.views).permute(0, 2, 3, 1).contiguous().numpy())
    results = [work.apply_model(m.model, inputs, **options_for(m, params)) for m in (champion, challenger)]
    for (label, _), x, a, b in zip(photos, inputs, *results, strict=True):
        cells = [data_uri(rgb(x))]
        for r in (a, b):
            cells.append(data_uri(rgb(r)) if not isinstance(r, str) else "")
        out.rows.append(Row(label, cells))
    return out


def comparison(champion: Champion, challenger: Champion, params: Any) -> Comparison:
    if champion.spec.generates:
        return sample_comparison(champion, challenger)
    return photo_comparison(champion, challenger, params)


def per_category_rows(entry: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(category, champion figure, challenger figure) on the entry's primary metric, for the side-by-side table."""
    metric = entry.get("metric")
    mine = entry.get("per_category") or {}
    theirs = entry.get("champion_per_category") or {}

    def figure(v: Any) -> str:
        if isinstance(v, dict):
            v = v.get(metric) if metric in v else next((x for k, x in v.items() if k != "n"), None)
        return f"{v:.4g}" if isinstance(v, (int, float)) else ("" if v is None else str(v))

    return [(c, figure(theirs.get(c)), figure(mine.get(c))) for c in sorted(set(mine) | set(theirs))]
