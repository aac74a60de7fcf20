"""Real MLflow registry: the promotion gate, rollback, history, and two promotions racing in two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from productgen.registry import promotion as registry
from tests.conftest import run_cli

EVAL = {"n_real": 100, "n_fake": 100, "extractor": {"sha": "a16e4d89c0ec"}}


@pytest.fixture(scope="module")
def model_uri(params: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One logged (unregistered) pyfunc model of a tiny trained GAN, registered many times below."""
    import mlflow

    out = tmp_path_factory.mktemp("reg") / "run"
    p = run_cli("train", "gan", "--params", str(params), "--max-steps", "2", "--out", str(out), "-q")
    assert p.returncode == 0, p.stderr
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return str(json.loads((out / "mlflow.json").read_text())["model_uri"])


def _fresh_task(monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    """A task name of its own for each test (one registered model per task): a copy of the gan entry."""
    import dataclasses

    from productgen import tasks

    monkeypatch.setitem(tasks.TASKS, name, dataclasses.replace(tasks.get("gan"), name=name))
    return name


def test_gate_rollback_and_history(model_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    task = _fresh_task(monkeypatch, "gate")
    v1 = registry.register_challenger(task, model_uri, {**EVAL, "fid": 50.0}, "c" * 64, "test")
    d1 = registry.promote(task, margin=0.5)
    assert d1.promoted and d1.reason.startswith("no champion yet") and d1.champion_after == v1
    v2 = registry.register_challenger(task, model_uri, {**EVAL, "fid": 40.0}, "c" * 64, "test")
    d2 = registry.promote(task, margin=0.5)
    assert d2.promoted and d2.champion_before == v1 and d2.champion_after == v2
    v3 = registry.register_challenger(task, model_uri, {**EVAL, "fid": 39.8}, "c" * 64, "test")
    d3 = registry.promote(task, margin=0.5)  # better, but not by the margin
    assert not d3.promoted and d3.champion_after == v2 and "margin 0.5" in d3.reason
    v4 = registry.register_challenger(task, model_uri, {**EVAL, "fid": 10.0}, "d" * 64, "test")
    d4 = registry.promote(task, margin=0.5)  # much better, but on another dataset
    assert not d4.promoted and "score both on this week's data" in d4.reason and "--rescore" in d4.reason
    rb = registry.rollback(task)
    assert rb.champion_before == v2 and rb.champion_after == v1
    events = registry.history(task)
    assert [(e["action"], e["promoted"], e["version"]) for e in events] == [
        ("promote", True, v1),
        ("promote", True, v2),
        ("promote", False, v3),
        ("promote", False, v4),
        ("rollback", True, v1),
    ]
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version(registry.model_name(task), v3).tags
    assert tags["promotion.decision"] == "rejected" and tags["eval.fid"] == "39.8"
    assert json.loads(tags["promotion.record"])["evidence"]["champion"]["version"] == v2


RACE = """
import dataclasses, sys
from productgen.registry import promotion as registry
from productgen import tasks
tasks.register(dataclasses.replace(tasks.get("gan"), name="race"))
d = registry.promote("race", version=sys.argv[1], margin=0.5)
print(d.promoted, d.champion_before, d.champion_after)
"""


def test_two_racing_promotions_leave_one_champion_and_a_consistent_history(
    model_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _fresh_task(monkeypatch, "race")
    base = registry.register_challenger(task, model_uri, {**EVAL, "fid": 60.0}, "c" * 64, "test")
    registry.promote(task, margin=0.5)
    a = registry.register_challenger(task, model_uri, {**EVAL, "fid": 30.0}, "c" * 64, "test")
    b = registry.register_challenger(task, model_uri, {**EVAL, "fid": 35.0}, "c" * 64, "test")
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, v], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for v in (a, b)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    from mlflow import MlflowClient

    champion = MlflowClient().get_model_version_by_alias(registry.model_name(task), "champion").version
    assert str(champion) == a  # the better one wins whatever the order
    events = registry.history(task)
    assert len(events) == 3 and events[0]["version"] == base
    for prev, nxt in zip(events, events[1:]):  # every decision saw the champion the previous one left
        assert nxt["champion_before"] == prev["champion_after"]


def test_registry_cli_and_champion_loads_in_a_fresh_process(model_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    v = registry.register_challenger("gan", model_uri, {**EVAL, "fid": 20.0}, "e" * 64, "test")
    p = run_cli("registry", "promote", "gan", "--force")
    assert p.returncode == 0 and "PROMOTED" in p.stdout, p.stderr
    h = run_cli("registry", "history", "gan", "--json")
    assert h.returncode == 0 and json.loads(h.stdout)[-1]["version"] == v
    bad = run_cli("registry", "promote", "shoes")
    assert bad.returncode == 2 and "unknown task 'shoes'" in bad.stderr
    missing = run_cli("registry", "promote", "gan", "--version", "99")  # a reliability probe found a traceback
    assert missing.returncode == 2 and "no version '99'" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    for args in (("rollback", "gan", "--to", "99"), ("lineage", "gan", "--version", "99")):
        p = run_cli("registry", *args)
        assert p.returncode == 2 and "no version '99'" in p.stderr and "Traceback" not in p.stderr, p.stderr
    code = (
        "import mlflow, pandas as pd; m = mlflow.pyfunc.load_model('models:/productgen-gan@champion'); "
        "print(len(m.predict(pd.DataFrame({'category': ['bags'], 'count': [2], 'seed': [1]}))))"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0 and fresh.stdout.strip().splitlines()[-1] == "2", fresh.stderr[-2000:]


def test_a_second_model_of_a_task_has_its_own_champion_and_history(
    model_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shop runs a denoiser and a 2x upscaler: both restore models, each with its own registered name."""
    from mlflow import MlflowClient

    from productgen.common.errors import UserError

    task, other = _fresh_task(monkeypatch, "named"), "productgen-named-sr2"
    a = registry.register_challenger(task, model_uri, {**EVAL, "fid": 50.0}, "c" * 64, "test")
    assert registry.promote(task).promoted
    b = registry.register_challenger(task, model_uri, {**EVAL, "fid": 90.0}, "f" * 64, "test", name=other)
    d = registry.promote(task, name=other)  # worse FID on another set, but it competes only with its own champion
    assert d.promoted and d.model == other and d.reason.startswith("no champion yet")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(registry.model_name(task), "champion").version) == a
    assert str(client.get_model_version_by_alias(other, "champion").version) == b
    assert [e["version"] for e in registry.history(task, other)] == [b] and len(registry.history(task)) == 1
    h = run_cli("registry", "history", "gan", "--name", other, "--json")
    assert h.returncode == 0 and [e["version"] for e in json.loads(h.stdout)] == [b], h.stderr
    with pytest.raises(UserError, match="is a named model, not gan"):
        registry.promote("gan", name=other)
    with pytest.raises(UserError, match="letters, digits"):
        registry.register_challenger(task, model_uri, {**EVAL, "fid": 1.0}, "c" * 64, "test", name="my model/x")
    bad = run_cli("registry", "promote", "gan", "--name", "my model/x")
    assert bad.returncode == 2 and "letters, digits" in bad.stderr + bad.stdout
