"""Score the challenger and the current champion on the same evaluation set, with the same code, in one run.

The champion is loaded from the registry (``models:/<name>@champion``), so it does not matter which machine
trained it or which week's data it was judged on then. A class-conditional generator can only be scored on the
categories it was trained on: when this week's set has new categories, both models are scored on the
categories they share (the overall comparison), and the new categories are judged by the challenger's own
per-category figures against the absolute bar (:mod:`productgen.registry.gate`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from productgen.config import Params


def champion_categories(tags: dict[str, str], model_dir: Path) -> list[str] | None:
    """The categories a registered version was trained on: its lineage tag, else its model config's classes."""
    from productgen.models.io import read_config

    if "lineage.categories" in tags:
        try:
            return list(json.loads(tags["lineage.categories"]))
        except (ValueError, TypeError):
            pass
    classes = read_config(model_dir).get("classes")
    return list(classes) if classes else None


def score_pair(
    p: Params,
    task: str,
    challenger_dir: Path,
    challenger_metrics: dict[str, Any] | None,
    challenger_version: str | None,
    prepared: Path,
    out: Path,
    name: str | None = None,
    show_progress: bool = False,
) -> tuple[Any, Any | None]:
    """``(challenger, champion)`` as :class:`~productgen.registry.gate.Scored` on one set; champion None when there is none.

    ``challenger_metrics``: the challenger's evaluation on the full set when already computed (the flow's
    tracked evaluation), reused when no category subset is needed.
    """
    from mlflow import MlflowClient

    from productgen.data.dataset import PreparedDataset
    from productgen.registry import promotion as registry
    from productgen.registry.gate import Scored
    from productgen.tasks import get
    from productgen.tracking.runs import model_dir_from_uri

    spec = get(task)
    model = registry.registered_name(task, name)
    ds = PreparedDataset(prepared, verify=False)
    split = p.evaluate.split

    def scored(version: str | None, metrics: dict[str, Any], trained_on: list[str] | None) -> Scored:
        return Scored(version, metrics, registry.eval_set_id(metrics, ds.content_hash, split), trained_on)

    if challenger_metrics is None:
        challenger_metrics = spec.evaluate(p, challenger_dir, prepared, out / "challenger", None, show_progress)
    client = registry._client()
    champion = registry.alias_version(client, model, registry.CHAMPION)
    if champion is None or champion == challenger_version:
        return scored(challenger_version, challenger_metrics, ds.classes), None
    champ_dir = model_dir_from_uri(f"models:/{model}/{champion}")
    trained_on = champion_categories(MlflowClient().get_model_version(model, champion).tags, champ_dir)
    subset = None
    if spec.conditional and trained_on is not None and list(trained_on) != ds.classes:
        subset = [c for c in ds.classes if c in trained_on]  # categories new or gone this week: the shared ones
        if not subset:
            from productgen.common.errors import UserError

            raise UserError(f"{model} v{champion}: shares no category with {prepared}; promote by hand (--force)")
    champ_metrics = spec.evaluate(p, champ_dir, prepared, out / f"champion-v{champion}", subset, show_progress)
    if subset is not None:
        # The overall comparison on the shared categories; the new ones keep the challenger's full breakdown.
        chal_subset = spec.evaluate(p, challenger_dir, prepared, out / "challenger-shared", subset, show_progress)
        chal_subset = {**chal_subset, "per_category": challenger_metrics.get("per_category", {})}
        return scored(challenger_version, chal_subset, ds.classes), scored(champion, champ_metrics, trained_on)
    return scored(challenger_version, challenger_metrics, ds.classes), scored(champion, champ_metrics, trained_on)
