"""Issue 21 on a real MLflow store without training (tiny pyfunc stand-ins as the registered versions; the gate's
inputs are what the evaluators return): the GAN whose refusal by the absolute bar was recorded as a wrong
"score again" instruction, the approval states and who may answer. The flow itself: test_approval_loop.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from productgen.common.errors import UserError
from productgen.config import RegistryConfig


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("PRODUCTGEN_WEB_USERS", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _version(task: str, metrics: dict[str, Any], categories: list[str]) -> str:
    import mlflow

    from productgen.registry import promotion as registry

    class Stand(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: Any) -> Any:
            return model_input

    registry._client()  # points mlflow at this test's store (an earlier test's stays set otherwise)
    mlflow.set_experiment("approval-registry")  # not the active experiment an earlier test left (another store's id)
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Stand())
    return registry.register_challenger(
        task,
        info.model_uri,
        metrics,
        "c" * 16,
        "test",
        run.info.run_id,
        lineage={"categories": json.dumps(categories), "key": f"key-{metrics}"},
    )


def _scored(version: str, metrics: dict[str, Any], trained_on: list[str]) -> Any:
    from productgen.registry.gate import Scored

    return Scored(version, metrics, "set-1", trained_on)


def test_gan_refused_by_the_absolute_bar_with_a_champion_keeps_its_reason(store: Path) -> None:
    from productgen.registry import gate
    from productgen.registry import promotion as registry

    cfg = RegistryConfig()
    cats = {"bag": {"fid": 70.0, "n": 300}, "shoe": {"fid": 60.0, "n": 300}}
    v1 = _version("gan", {"fid": 80.0, "per_category": cats}, ["bag", "shoe", "sandal"])
    registry.promote("gan", v1, cfg=cfg)
    v2 = _version("gan", {"fid": 61.4, "per_category": cats}, ["bag", "shoe", "sandal"])
    assert registry.promote("gan", v2, force=True, cfg=cfg).promoted
    weak = {"fid": 303.2, "per_category": {"bag": {"fid": 310.0, "n": 300}, "shoe": {"fid": 296.0, "n": 300}}}
    v3 = _version("gan", weak, ["bag", "shoe"])
    champion = _scored(v2, {"fid": 61.4, "per_category": cats}, ["bag", "shoe", "sandal"])
    verdict = gate.decide("gan", _scored(v3, weak, ["bag", "shoe"]), champion, cfg)
    registry.record_verdict("gan", v3, verdict)
    d = registry.promote("gan", v3, verdict=verdict, cfg=cfg)  # what the retrain flow runs
    assert not d.promoted
    assert d.reason.startswith("fid 303.2 fails the absolute bar (max 300; registry.fid_max)"), d.reason
    assert "(champion v2 on the same set: fid 61.4)" in d.reason and "no longer in the data: sandal" in d.reason
    assert "score again" not in d.reason and "--rescore" not in d.reason
    record = json.loads(registry._client().get_model_version("productgen-gan", v3).tags["promotion.record"])
    assert record["reason"] == d.reason and record["evidence"]["champion"]["fid"] == 61.4
    assert record["evidence"]["categories"]["removed"] == ["sandal"] and record["evidence"]["refused_by"] == "absolute"
    # the champion moves; promoting v3 by hand later keeps the same reason and says what changed
    registry.rollback("gan", v1)
    again = registry.promote("gan", v3, cfg=cfg)
    assert again.reason.startswith("fid 303.2 fails the absolute bar") and "--rescore" not in again.reason
    assert "judged against champion v2; the champion is now v1" in again.reason
    # a verdict to promote still needs its champion in place
    good = gate.Verdict(True, "better", {"champion": {"version": v2}})
    stale = registry.promote("gan", v3, verdict=good, cfg=cfg)
    assert not stale.promoted and "score again" in stale.reason
    # and an unchanged week after the refusal is skipped only against the champion it was judged against
    key = f"key-{weak}"
    assert registry.earlier_decision("gan", key, v1) is None  # the champion is v1 now: judge afresh
    registry.promote("gan", v2, force=True, cfg=cfg)
    version, what = registry.earlier_decision("gan", key, v2)
    assert version == v3 and what.startswith("rejected by the gate: fid 303.2 fails the absolute bar")


def test_approval_states_and_who_may_answer(store: Path) -> None:
    from productgen.registry import approval
    from productgen.registry import promotion as registry

    cfg = RegistryConfig()
    v1 = _version("restore", {"psnr": 28.0, "gain_db": 4.0}, ["bag"])
    registry.promote("restore", v1, cfg=cfg)
    v2 = _version("restore", {"psnr": 29.0, "gain_db": 5.0}, ["bag"])
    verdict = registry._stored_verdict(registry._client(), "restore", "productgen-restore", v2, v1, None, cfg)
    registry.record_verdict("restore", v2, verdict)
    asked = approval.request("restore", v2, 1.0)
    assert asked["state"] == "waiting" and asked["champion"] == v1
    with pytest.raises(UserError, match="approval waiting"):
        registry.promote("restore", v2, cfg=cfg)  # no way around the answer but --force
    (store / "web-users.txt").write_text("carol:scrypt:16384:8:1:00:00\n")
    assert approval.can_answer("carol") and not approval.can_answer("mallory")
    with pytest.raises(UserError, match="'mallory' may not answer"):
        approval.approve("restore", v2, "mallory")
    with pytest.raises(UserError, match="needs a reason"):
        approval.reject("restore", v2, "carol", "  ")
    [entry] = approval.waiting("restore")
    assert entry["version"] == v2 and entry["champion"] == v1 and entry["metrics"]["psnr"] == 29.0
    assert entry["champion_metrics"]["psnr"] == 28.0 and entry["lineage"]["categories"] == '["bag"]'
    done = approval.approve("restore", v2, "carol", "checked the bags")
    assert done["promoted"] and done["state"] == "approved" and done["by"] == "carol"
    assert approval.wait("restore", v2, 0.1)["promoted"]
    record = json.loads(registry._client().get_model_version("productgen-restore", v2).tags["promotion.record"])
    assert record["promoted"] and record["approval"]["by"] == "carol"
    (store / "web-users.txt").unlink()
    assert approval.can_answer(approval.current_user())  # no users file: the OS user may
    with pytest.raises(UserError, match="not waiting for approval"):
        approval.reject("restore", v2, "carol", "too late")


def test_a_reviewer_never_sees_a_request_half_written(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CI caught a reviewer (the web page, ``registry waiting``) listing a version as waiting before its deadline was
    written. Here the real store is read between every tag write of ``request``: whenever the version is listed, its
    request time, deadline and challenger alias are already there."""
    from mlflow import MlflowClient

    from productgen.registry import approval
    from productgen.registry import promotion as registry

    v1 = _version("restore", {"psnr": 28.0, "gain_db": 4.0}, ["bag"])
    registry.promote("restore", v1, cfg=RegistryConfig())
    v2 = _version("restore", {"psnr": 29.0, "gain_db": 5.0}, ["bag"])
    seen: list[dict[str, Any]] = []
    real = MlflowClient.set_model_version_tag

    def observed(self: Any, name: str, version: str, key: str, value: Any) -> None:
        for e in approval.waiting("restore"):
            seen.append(e)
            assert e["requested_at"] and e["deadline"] and e["requested_at"] < e["deadline"], e
            assert registry.alias_version(registry._client(), name, registry.CHALLENGER) == e["version"], e
        real(self, name, version, key, value)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", observed)
    approval.request("restore", v2, 1.0)
    monkeypatch.setattr(MlflowClient, "set_model_version_tag", real)
    [entry] = approval.waiting("restore")
    assert entry["version"] == v2 and entry["deadline"] and not seen  # listed only once the request is whole
