"""The retrain flow deployed to a real Prefect server (PostgreSQL database, auth string) from the project's own
prefect.yaml with a cron schedule; the server's scheduler creates the run, a process worker on the `productgen`
pool picks it up, and the flow trains, evaluates, registers and promotes against the real MLflow server
(PostgreSQL, basic-auth) with its artifacts landing in the S3 bucket. Then two promotions race against that
server.

Why cron + the worker's prefetch: the cron is every minute (`* * * * *`, the finest standard cron), and the
worker looks 60 s ahead (PREFECT_WORKER_PREFETCH_SECONDS), so it starts the run the schedule created as soon as
it exists instead of idling up to a minute until its slot; the run is still one the scheduler created from the
deployment's cron (auto_scheduled, on a minute boundary), not one the test asked for."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest

from productgen.metrics.extractors import installed_tf_inception
from tests.conftest import BIN, ROOT, write_good_folder
from tests.team import servers

pytestmark = [
    pytest.mark.team,
    pytest.mark.skipif(installed_tf_inception() is None, reason="TF-Inception weights missing (make setup)"),
]

# The flow's tiny settings (as tests/integration/test_flow.py): 36 folder images, 2 training steps, FID on 12+12.
PARAMS = """\
data: {{source: folder, input: {root}/shop, out: {root}/prepared, mode: L, resolution: 28}}
validation: {{out: {root}/validation, min_images_per_category: 5}}
train: {{out: {root}/train, batch_size: 8, max_steps: 2, log_every: 1, sample_every: 2, checkpoint_every: 2,
         device: cpu}}
gan: {{z_dim: 16, g_channels: 16, d_channels: 16, max_channels: 32, embed_dim: 16}}
evaluate: {{out: {root}/eval, split: train, max_real: 12, num_fake: 12, device: cpu}}
registry: {{fid_max: null}}
retrain: {{dvc_repo: {root}/repo, drift: {{enabled: false}}}}
"""


def _prefect(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode == 0, f"prefect {' '.join(args)}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def _runs(stack: servers.Stack, deployment: str) -> list[dict[str, Any]]:
    """The deployment's flow runs, oldest slot first (REST API, authenticated)."""
    flow, name = deployment.split("/")
    d = stack.prefect.api("GET", f"/deployments/name/{flow}/{name}")
    runs = stack.prefect.api("POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [d["id"]]}}})
    return sorted(runs, key=lambda r: r["expected_start_time"])


@pytest.fixture(scope="module")
def scheduled_run(stack: servers.Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("retrain")
    write_good_folder(root / "shop", {"bags": 12, "shoes": 12, "shirts": 12}, size=(28, 28))
    (root / "params.yaml").write_text(PARAMS.format(root=root))
    # The data snapshots go to a DVC repository (not a git checkout: md5 only) whose default remote is the S3 bucket.
    dvc = str(BIN / "dvc")
    (root / "repo").mkdir()
    for args in (
        ("init", "-q", "--no-scm"),
        ("remote", "add", "-d", "team", "s3://dvc/retrain"),
        ("remote", "modify", "team", "endpointurl", stack.s3.endpoint),
        ("remote", "modify", "--local", "team", "access_key_id", stack.s3.access_key),
        ("remote", "modify", "--local", "team", "secret_access_key", stack.s3.secret_key),
    ):
        subprocess.run([dvc, *args], cwd=root / "repo", check=True, capture_output=True)
    env = stack.client_env(
        PRODUCTGEN_DIR=str(ROOT),
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="60",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    _prefect(env, "work-pool", "create", "productgen", "--type", "process")
    params = {
        "params": {
            "task": "gan",
            "params_file": str(root / "params.yaml"),
            "profile": None,
            "tune_trials": 0,
            "promote": True,
            "run_tag": "scheduled",
        }
    }
    _prefect(
        env,
        "--no-prompt",
        "deploy",
        "--name",
        "weekly-retrain",
        "--cron",
        "* * * * *",
        "--timezone",
        "UTC",
        "--params",
        json.dumps(params),
    )

    # The server's scheduler (every 2 s here) creates the cron's upcoming runs.
    deadline = time.monotonic() + 60
    runs: list[Any] = []
    while time.monotonic() < deadline and not runs:
        runs = [r for r in _runs(stack, "retrain/weekly-retrain") if r["state_name"] == "Scheduled"]
        time.sleep(1)
    assert runs, f"the scheduler created no run:\n{stack.prefect.server.tail()}"

    # One polling pass: the worker takes the first scheduled run (within its 60 s prefetch), runs it, exits.
    log = root / "worker.log"
    with open(log, "wb") as fh:
        worker = subprocess.Popen(
            [
                str(BIN / "prefect"),
                "worker",
                "start",
                "--pool",
                "productgen",
                "--type",
                "process",
                "--limit",
                "1",
                "--run-once",
            ],
            env=env,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    w = servers.Server("prefect-worker", worker, log)
    try:
        worker.wait(timeout=480)
    except subprocess.TimeoutExpired:
        pass
    finally:
        w.stop()
    final = [stack.prefect.api("GET", f"/flow_runs/{r['id']}") for r in runs]
    deployment = stack.prefect.api("GET", "/deployments/name/retrain/weekly-retrain")
    # No more scheduled runs (the server keeps running for the other tests): deleting the deployment drops them.
    _prefect(env, "deployment", "delete", "retrain/weekly-retrain")
    return {
        "root": root,
        "scheduled": runs,
        "final": final,
        "worker_log": log.read_text(errors="replace"),
        "deployment": deployment,
    }


def _finished(scheduled_run: dict[str, Any]) -> dict[str, Any]:
    """The one run the worker took (the cron's later slots stayed Scheduled, or Late once their minute passed,
    until the deployment went: the worker polled once and ran one flow at a time)."""
    runs = scheduled_run["final"]
    done = [r for r in runs if r["state_name"] not in ("Scheduled", "Late")]
    assert len(done) == 1, ([(r["name"], r["state_name"]) for r in runs], scheduled_run["worker_log"][-5000:])
    return done[0]


def test_cron_deployment_run_is_picked_up_by_a_worker_and_completes(scheduled_run: dict[str, Any]) -> None:
    run = _finished(scheduled_run)
    assert run["state_name"] == "Completed", scheduled_run["worker_log"][-6000:]
    assert run["auto_scheduled"] and "auto-scheduled" in run["tags"]  # created by the cron schedule, not the test
    assert scheduled_run["deployment"]["global_concurrency_limit"]["limit"] == 1  # one retrain at a time (prefect.yaml)
    assert scheduled_run["deployment"]["concurrency_options"]["collision_strategy"] == "ENQUEUE"  # a second one waits
    start = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
    assert start.second == 0 and start.microsecond == 0  # a cron slot: a minute boundary
    assert run["parameters"]["params"]["params_file"] == str(scheduled_run["root"] / "params.yaml")
    log = scheduled_run["worker_log"]
    assert "submitted to infrastructure" in log and "promoted to champion" in log, log[-4000:]
    root = scheduled_run["root"]  # it ran with the deployment's parameters: outputs where that params file says
    assert any(root.glob("train/**/scheduled/model/generator.safetensors"))  # run_tag "scheduled"
    assert any(root.glob("eval/**/scheduled/samples.png"))


def test_champion_is_in_the_mlflow_server_with_its_artifacts_in_s3(
    scheduled_run: dict[str, Any], on_team_servers: servers.Stack
) -> None:
    from mlflow import MlflowClient

    assert _finished(scheduled_run)["state_name"] == "Completed"
    client = MlflowClient(tracking_uri=on_team_servers.mlflow.url)
    champion = client.get_model_version_by_alias("productgen-gan", "champion")
    assert float(champion.tags["eval.fid"]) > 0 and champion.tags["promotion.decision"] == "promoted"
    # the data it trained on is a DVC snapshot in the S3 remote, identified by its md5 (no git checkout: no tag)
    md5 = champion.tags["lineage.data_md5"]
    assert md5.endswith(".dir") and "lineage.git_tag" not in champion.tags
    dvc_keys = on_team_servers.s3.keys("dvc", "retrain/")
    assert any(k.endswith(md5.removesuffix(".dir")[2:] + ".dir") for k in dvc_keys), dvc_keys[:20]
    model = (
        client.get_logged_model(champion.source.split("/")[-1]) if champion.source.startswith("models:/m-") else None
    )
    location = model.artifact_location if model else champion.source
    assert location.startswith("mlflow-artifacts:/"), location  # proxied by the server, stored in S3
    prefix = "artifacts/" + location[len("mlflow-artifacts:/") :].strip("/") + "/"
    keys = on_team_servers.s3.keys(on_team_servers.mlflow.bucket, prefix)
    names = {k.rsplit("/", 1)[-1] for k in keys}
    assert {"MLmodel", "generator.safetensors", "config.json"} <= names, keys
    assert not any(k.endswith((".pkl", ".pt", ".pth")) for k in keys)  # safetensors + JSON only
    # The run's other artifacts (sample grid, metrics) are in the bucket too.
    run = client.get_run(champion.run_id)
    run_prefix = "artifacts/" + run.info.artifact_uri[len("mlflow-artifacts:/") :].strip("/") + "/"
    assert on_team_servers.s3.keys(on_team_servers.mlflow.bucket, run_prefix)


RACE = """
import dataclasses, sys
from productgen.registry import promotion as registry
from productgen import tasks
tasks.register(dataclasses.replace(tasks.get("gan"), name="teamrace"))
d = registry.promote("teamrace", version=sys.argv[1], margin=0.5)
print(d.promoted, d.champion_before, d.champion_after)
"""


def test_two_racing_promotions_against_the_server_leave_one_champion(
    scheduled_run: dict[str, Any], on_team_servers: servers.Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As tests/integration/test_registry.py, but two processes promoting against the tracking server."""
    import dataclasses

    from mlflow import MlflowClient

    from productgen import tasks
    from productgen.registry import promotion as registry

    monkeypatch.setitem(tasks.TASKS, "teamrace", dataclasses.replace(tasks.get("gan"), name="teamrace"))
    uri = (
        MlflowClient(tracking_uri=on_team_servers.mlflow.url)
        .get_model_version_by_alias("productgen-gan", "champion")
        .source
    )
    ev = {"n_real": 100, "n_fake": 100, "extractor": {"sha": "a16e4d89c0ec"}}
    base = registry.register_challenger("teamrace", uri, {**ev, "fid": 60.0}, "c" * 64, "test")
    registry.promote("teamrace", margin=0.5)
    a = registry.register_challenger("teamrace", uri, {**ev, "fid": 30.0}, "c" * 64, "test")
    b = registry.register_challenger("teamrace", uri, {**ev, "fid": 35.0}, "c" * 64, "test")
    # The cross-machine lock: a PostgreSQL advisory lock in the team database (not a file on this machine).
    lock_url = on_team_servers.pg.url(on_team_servers.pg.databases[0])
    env = on_team_servers.client_env(PRODUCTGEN_PROMOTION_LOCK_URL=lock_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, v], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for v in (a, b)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    champion = (
        MlflowClient(tracking_uri=on_team_servers.mlflow.url)
        .get_model_version_by_alias(registry.model_name("teamrace"), "champion")
        .version
    )
    assert str(champion) == a  # the better one wins whatever the order
    events = registry.history("teamrace")
    assert len(events) == 3 and events[0]["version"] == base
    for prev, nxt in zip(events, events[1:]):
        assert nxt["champion_before"] == prev["champion_after"]
