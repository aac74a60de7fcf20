"""prefect.yaml and flows/serve.py declare the same deployments, with entrypoints that are real flows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT


def _load(module_path: Path) -> object:
    sys.path.insert(0, str(module_path.parent))
    spec = importlib.util.spec_from_file_location(module_path.stem, module_path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prefect_yaml_entrypoints_are_flows_and_schedules_are_cron() -> None:
    from prefect import Flow
    from prefect.client.schemas.schedules import CronSchedule

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in doc["deployments"]}
    assert {"weekly-retrain", "quick-retrain", "promote"} <= names
    for dep in doc["deployments"]:
        file, func = dep["entrypoint"].split(":")
        flow = getattr(_load(ROOT / file), func)
        assert isinstance(flow, Flow), dep["entrypoint"]
        for sched in dep.get("schedules", []):
            CronSchedule(cron=sched["cron"], timezone=sched.get("timezone", "UTC"))  # raises if invalid
    weekly = next(d for d in doc["deployments"] if d["name"] == "weekly-retrain")
    assert weekly["schedules"][0]["cron"] == "0 3 * * 1"
    serve = _load(ROOT / "flows" / "serve.py")
    served = {d.name: d for d in serve.deployments()}  # type: ignore[attr-defined]
    assert set(served) == names
    assert [s.schedule.cron for s in served["weekly-retrain"].schedules] == ["0 3 * * 1"]
    # one retrain per task at a time, and a second one waits (it is not cancelled), in both declarations
    for name in ("weekly-retrain", "quick-retrain"):
        yaml_limit = next(d for d in doc["deployments"] if d["name"] == name)["concurrency_limit"]
        assert yaml_limit == {"limit": 1, "collision_strategy": "ENQUEUE"}
        assert served[name].concurrency_limit == 1
        assert served[name].concurrency_options.collision_strategy.value == "ENQUEUE"
    from retrain import RetrainParams  # type: ignore[import-not-found]

    RetrainParams(**weekly["parameters"]["params"])  # the YAML parameters validate against the flow's model
