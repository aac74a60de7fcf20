"""Distributed tuning on the team's PostgreSQL: two `productgen tune gan` worker processes share one Optuna study
(real training, real TF-Inception FID, tiny settings). One worker is killed with SIGKILL in the middle of a
trial; its trial is failed through the heartbeat (no worker left to finish it) and re-run with the same
parameters by the other worker, which completes the study: every trial ran in exactly one worker, none is left
RUNNING or WAITING, and the study holds the requested number of finished trials."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from productgen.metrics.extractors import installed_tf_inception
from tests.conftest import BIN
from tests.team import servers

pytestmark = [
    pytest.mark.team,
    pytest.mark.skipif(installed_tf_inception() is None, reason="TF-Inception weights missing (make setup)"),
]

TOTAL = 4
# 6 steps per trial with a FID at steps 2, 4 and 6 (so "mid-trial" is a state that lasts seconds); heartbeats
# every second, a trial silent for 6 s is dead (generous: a loaded 2-core machine can stall a process for a
# few seconds, and a live trial must never be failed).
TUNE = """\
tune:
  storage: {storage}
  study: {study}
  out: {out}
  trials: 10
  total_trials: {total}
  steps: 6
  eval_every: 2
  eval_images: 8
  eval_split: train
  device: cpu
  pruner: none
  heartbeat_interval: 1
  grace_period: 6
  retries: 1
"""


def _study(storage: str, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture(scope="module")
def killed_study(stack: servers.Stack, params: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dtune")
    storage, study = stack.pg.url("optuna"), "team-gan"
    pfile = root / "params.yaml"
    pfile.write_text(params.read_text() + TUNE.format(storage=storage, study=study, out=root / "out", total=TOTAL))
    env = servers.base_env(PRODUCTGEN_FID_STATS_DIR=str(root / "fid-stats"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [str(BIN / "productgen"), "tune", "gan", "--params", str(pfile), "--no-track", "-q"]
    logs = {w: root / f"worker-{w}.log" for w in ("a", "b")}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for w in ("a", "b"):
        with open(logs[w], "wb") as fh:
            procs[w] = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    victim_id = f"{socket.gethostname()}:{procs['a'].pid}"
    try:
        # Kill worker a once one of its trials has reported an intermediate FID: mid-trial, not between trials.
        deadline, victim = time.monotonic() + 240, None
        while time.monotonic() < deadline and victim is None:
            assert procs["a"].poll() is None, logs["a"].read_text()[-3000:]
            try:
                for t in _study(storage, study).get_trials(deepcopy=False):
                    if t.state.name == "RUNNING" and t.user_attrs.get("worker") == victim_id and t.intermediate_values:
                        victim = t.number
            except KeyError:  # the study does not exist yet
                pass
            time.sleep(0.3)
        assert victim is not None, logs["a"].read_text()[-3000:]
        os.killpg(procs["a"].pid, signal.SIGKILL)
        procs["a"].wait(timeout=30)
        killed_at = time.monotonic()
        rc_b = procs["b"].wait(timeout=300)
        b_took = time.monotonic() - killed_at
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
    return {
        "storage": storage,
        "study": study,
        "victim": victim,
        "victim_worker": victim_id,
        "rc_b": rc_b,
        "out": root / "out",
        "b_worker": f"{socket.gethostname()}:{procs['b'].pid}",
        "b_took": b_took,
        "logs": {w: p.read_text(errors="replace") for w, p in logs.items()},
    }


def test_the_surviving_worker_finishes_the_study(killed_study: dict[str, Any]) -> None:
    log_b = killed_study["logs"]["b"]
    assert killed_study["rc_b"] == 0, log_b[-4000:]
    trials = _study(killed_study["storage"], killed_study["study"]).get_trials()
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and "WAITING" not in states, states  # nothing left hanging
    finished = sum(s in ("COMPLETE", "PRUNED") for s in states)
    assert TOTAL <= finished <= TOTAL + 1, states  # stop at TOTAL (one more if both workers raced past it)
    assert "best params:" in log_b and (killed_study["out"] / "best_params.yaml").is_file()


def test_the_killed_trial_is_failed_by_heartbeat_and_retried_with_the_same_params(killed_study: dict[str, Any]) -> None:
    import warnings

    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    trials = _study(killed_study["storage"], killed_study["study"]).get_trials()
    victim = trials[killed_study["victim"]]
    assert victim.state.name == "FAIL" and victim.user_attrs["worker"] == killed_study["victim_worker"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == victim.number]
    assert len(retries) == 1, [(t.number, t.state.name, t.system_attrs) for t in trials]
    retry = retries[0]
    assert retry.state.name == "COMPLETE" and retry.params == victim.params
    assert retry.user_attrs["worker"] == killed_study["b_worker"]  # the surviving worker ran it
    assert (killed_study["out"] / f"trial-{retry.number}" / "model" / "generator.safetensors").is_file()


def test_every_trial_ran_in_exactly_one_worker(killed_study: dict[str, Any]) -> None:
    trials = _study(killed_study["storage"], killed_study["study"]).get_trials()
    workers = {killed_study["victim_worker"], killed_study["b_worker"]}
    assert {t.user_attrs["worker"] for t in trials} <= workers
    assert len({t.number for t in trials}) == len(trials)
    said = {
        w: set(map(int, re.findall(r"^trial (\d+) (?:complete|pruned)", log, re.M)))
        for w, log in killed_study["logs"].items()
    }
    assert not said["a"] & said["b"]  # no trial was finished by both
    for t in trials:
        if t.state.name == "COMPLETE":
            mine = "a" if t.user_attrs["worker"] == killed_study["victim_worker"] else "b"
            assert t.number in said[mine], (t.number, said)
    assert said["a"] | said["b"] == {t.number for t in trials if t.state.name == "COMPLETE"}
