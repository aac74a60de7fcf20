"""Serve the flows locally with their schedules, without a work pool: weekly retraining and on-demand promotion.

    prefect server start &                       # schedules need a real server (not the ephemeral one)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python flows/serve.py                        # keeps running; triggers scheduled runs in this process
    prefect deployment run 'promote/promote' -p version=3

The same deployments are declared in prefect.yaml for `prefect deploy --all` with a process work pool.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prefect import serve  # noqa: E402

from promote import promote_flow  # noqa: E402
from retrain import RetrainParams, retrain  # noqa: E402

WEEKLY = "0 3 * * 1"  # Mondays 03:00 UTC


def deployments() -> list:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    # One retrain per deployment (task) at a time: a second run waits for the first (as prefect.yaml).
    one = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    # _sync=True: this function is synchronous wherever it is called. Prefect otherwise hands back coroutines when
    # the caller's thread has a running event loop (a notebook, or a test process that drove a browser before).
    return [
        retrain.to_deployment(  # type: ignore[call-arg]
            name="weekly-retrain",
            cron=WEEKLY,
            parameters={"params": RetrainParams().model_dump()},
            tags=["productgen", "scheduled"],
            _sync=True,
            concurrency_limit=one,
        ),
        retrain.to_deployment(  # type: ignore[call-arg]
            name="quick-retrain",
            parameters={"params": RetrainParams(profile="quick-cpu").model_dump()},
            tags=["productgen", "on-demand"],
            concurrency_limit=one,
            _sync=True,
        ),
        promote_flow.to_deployment(name="promote", tags=["productgen", "on-demand"], _sync=True),  # type: ignore[call-arg]
    ]


if __name__ == "__main__":
    serve(*deployments())
