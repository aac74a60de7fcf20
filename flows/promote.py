"""On-demand promotion as a Prefect flow (deployment ``promote`` in prefect.yaml): the same gate as
``productgen registry promote``, run where the team's tracking server and registry are."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE


@task(name="promote", cache_policy=NONE, retries=3, retry_delay_seconds=[5, 20, 60], timeout_seconds=600)
def promote_version(
    model_task: str, version: str | None, margin: float | None, force: bool, model_name: str | None = None
) -> dict[str, Any]:
    from productgen.config import load_params
    from productgen.registry import promotion as registry

    cfg = load_params("params.yaml").registry
    if margin is None:
        margin = registry.margin_for(model_task, cfg)
    return registry.decision_dict(registry.promote(model_task, version, margin, force, model_name, cfg=cfg))


@flow(name="promote", log_prints=True)
def promote_flow(
    model_task: str = "gan",
    version: str | None = None,
    margin: float | None = None,
    force: bool = False,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Promote ``version`` (default: the challenger) if it beats the champion; record the decision.
    ``model_name``: a task's second registered model (default productgen-<model_task>)."""
    d = promote_version(model_task, version, margin, force, model_name)
    verdict = "promoted" if d["promoted"] else "rejected"
    create_markdown_artifact(
        key=f"{model_task}-promotion",
        description=f"{d['model']} v{d['version']}: {verdict}",
        markdown=f"**{d['model']} v{d['version']}: {verdict}** ({d['reason']})\n\n"
        f"champion v{d['champion_before']} -> v{d['champion_after']}",
    )
    print(f"{d['model']} v{d['version']}: {verdict} ({d['reason']}); champion v{d['champion_after']}")
    return d


if __name__ == "__main__":
    promote_flow()
