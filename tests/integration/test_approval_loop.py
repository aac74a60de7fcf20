"""Approval before promotion and the extended skip rule (issue 21), through the real ``retrain`` flow (Prefect
ephemeral mode, own PREFECT_HOME), a real MLflow SQLite store and real DVC, as test_retrain_loop.py does:

- week 1 (registry.approval auto) -> v1 promoted, as today;
- week 2 (approval required) -> v2 passes the gate and waits; from this test process, while the flow polls, a user
  missing from the users file cannot approve (approval.approve raises), then ``productgen registry reject`` (typer's
  CliRunner) ends the run not promoted, the record saying who, when and why; the webhook got the Models page link;
- week 3, nothing changed -> skipped: "nothing changed since v2 (rejected by carol ...)", nothing registered;
- a week nobody answers (approval_timeout_hours tiny) -> timed_out, not promoted, recorded;
- a week whose challenger fails the absolute bar while v1 is champion -> the record keeps that reason with the
  champion's score on the same set (not "score again"); the same week again is skipped ("rejected by the gate").

One driver process runs the weeks (one Prefect ephemeral server start); the gate's margins are opened wide so that
every decision here is made by the rule under test, not by how well 60 CPU steps happened to train.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from productgen.metrics.extractors import installed_tf_inception
from tests.conftest import BIN, ROOT
from tests.integration.test_retrain_loop import DRIVER

pytestmark = [
    pytest.mark.skipif(installed_tf_inception() is None, reason="TF-Inception weights missing (make setup)"),
    pytest.mark.timeout(1500),  # the driver runs six weeks (four trainings) in the first test's setup
]

CATEGORIES = ("bags", "shoes", "shirts")
MODEL = "productgen-restore"

# fp32 as in test_retrain_loop; margins wide open (any challenger beats the champion, no category counts as worse,
# the absolute bar always passes) so the approval decides; the profiles below switch approval and the bar.
PARAMS = """\
data: {{source: folder, input: {root}/shop, out: {root}/prepared, mode: L, resolution: 28,
        split: {{train: 0.6, val: 0.1, test: 0.3}}}}
validation: {{out: {root}/validation, min_images_per_category: 5, max_split_deviation: 0.1}}
train: {{out: "{root}/train/{{task}}", batch_size: 8, max_steps: 20, log_every: 10, sample_every: 20,
         checkpoint_every: 20, device: cpu, precision: fp32}}
restore: {{channels: 8, max_channels: 16, view: noise25, lr: 0.003, warmup_steps: 0}}
evaluate: {{out: "{root}/eval/{{task}}", model: "{root}/train/{{task}}/model", device: cpu}}
registry: {{psnr_margin: -100.0, category_psnr_margin: 100.0, gain_db_min: -100.0, review_url: "http://shop.test:8000/"}}
retrain: {{dvc_repo: {root}, drift: {{max_per_category: 6, min_fid_images: 50, device: cpu}}}}
"""
REQUIRED = "registry: {approval: required, approval_timeout_hours: 0.1, approval_poll_seconds: 0.2}\n"
# a new recipe (another params hash, so another key) that nobody answers in time
TIMEOUT = (
    "registry: {approval: required, approval_timeout_hours: 0.0005, approval_poll_seconds: 0.2}\n"
    "train: {max_steps: 4}\n"
)
# another recipe, judged by an absolute bar it cannot clear, with v1 as champion
BAR = "registry: {approval: required, gain_db_min: 100.0}\ntrain: {max_steps: 3}\n"


class _Receiver(http.server.BaseHTTPRequestHandler):
    events: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Receiver.events.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _answer(root: Path, answers: dict[str, Any], stop: threading.Event) -> None:
    """What a reviewer does while week 2's flow polls: look at what waits, try as an unlisted user, reject."""
    from typer.testing import CliRunner

    from productgen.cli import app
    from productgen.common.errors import UserError
    from productgen.registry import approval

    while not stop.is_set():
        try:
            entries = approval.waiting("restore")
        except Exception:  # noqa: BLE001 - the model is not registered yet
            entries = []
        if any(e["version"] == "2" for e in entries):
            break
        time.sleep(0.5)
    else:
        return
    answers["waiting"] = entries
    try:
        approval.approve("restore", "2", "mallory", "looks fine", users_file=root / "web-users.txt")
        answers["mallory"] = "approved"
    except UserError as err:
        answers["mallory"] = str(err)
    answers["still_waiting"] = [e["version"] for e in approval.waiting("restore")]
    result = CliRunner().invoke(
        app,
        [
            "registry",
            "reject",
            "restore",
            "--version",
            "2",
            "--reason",
            "bags look blurry",
            "--user",
            "carol",
            "--users-file",
            str(root / "web-users.txt"),
        ],
    )
    answers["reject"] = {"code": result.exit_code, "output": result.output + repr(result.exception or "")}
    empty = CliRunner().invoke(
        app, ["registry", "reject", "restore", "--version", "2", "--reason", " ", "--user", "carol"]
    )
    answers["empty_reason"] = {"code": empty.exit_code, "output": empty.output}


@pytest.fixture(scope="module")
def weeks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("approval")
    for cat in CATEGORIES:
        (root / "shop" / cat).mkdir(parents=True)
    (root / "params.yaml").write_text(PARAMS.format(root=root))
    for name, text in (("required.yaml", REQUIRED), ("timeout.yaml", TIMEOUT), ("bar.yaml", BAR)):
        (root / name).write_text(text)
    # the web page's users file: carol may answer, mallory may not (the hash is never checked here)
    (root / "web-users.txt").write_text("# users\ncarol:scrypt:16384:8:1:00:00\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        [str(BIN / "dvc"), "remote", "add", "-d", "local", str(root / "remote")],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "project"],
    ):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    k = {c: 1000 * i for i, c in enumerate(CATEGORIES)}
    required, timeout, bar = (str(root / n) for n in ("required.yaml", "timeout.yaml", "bar.yaml"))
    plan = [
        {"name": "week1", "grow": [[c, k[c], 30] for c in CATEGORIES]},
        {"name": "week2", "grow": [[c, k[c] + 30, 20] for c in CATEGORIES], "profile": required},
        {"name": "week3", "profile": required},
        {"name": "timeout", "profile": timeout},
        {"name": "bar", "profile": bar},
        {"name": "bar-again", "profile": bar},
    ]
    (root / "plan.json").write_text(json.dumps(plan))
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.events = []
    uri = f"sqlite:///{root}/mlflow.db"
    run_env = {
        **env,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": uri,
        "PRODUCTGEN_NOTIFY_URL": f"http://127.0.0.1:{server.server_port}/hook",
        "PRODUCTGEN_FID_STATS_DIR": str(root / "fid-cache"),
    }
    run_env.pop("PREFECT_API_URL", None)
    run_env.pop("PRODUCTGEN_WEB_USERS", None)
    # The code's commit and diff are part of the run key; in a work tree where others commit and edit while this
    # runs, week 3's key would change with their edits and it would train. Keep the package out of git's reach
    # (code: "unknown", the same every week); the temporary DVC/git repository is outside src/ and unaffected.
    run_env["GIT_CEILING_DIRECTORIES"] = str(ROOT / "src")
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # this process answers in the same store
    answers: dict[str, Any] = {}
    stop = threading.Event()
    reviewer = threading.Thread(target=_answer, args=(root, answers, stop), daemon=True)
    reviewer.start()
    started = time.monotonic()
    try:
        p = subprocess.run(
            [sys.executable, "-c", DRIVER, str(ROOT / "flows"), str(root), str(root / "plan.json"), str(root / "out")],
            cwd=root,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        stop.set()
        reviewer.join(timeout=60)
        server.shutdown()
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:]
    return {
        "root": root,
        "results": json.loads((root / "out").read_text()),
        "log": log,
        "events": list(_Receiver.events),
        "answers": answers,
        "env": run_env,
        "seconds": time.monotonic() - started,
    }


def _tags(weeks: dict[str, Any], version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=weeks["env"]["MLFLOW_TRACKING_URI"]).get_model_version(MODEL, version).tags


def _champion(weeks: dict[str, Any]) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=weeks["env"]["MLFLOW_TRACKING_URI"])
    return str(client.get_model_version_by_alias(MODEL, "champion").version)


def test_week1_with_approval_auto_is_promoted_as_today(weeks: dict[str, Any]) -> None:
    r = weeks["results"]["week1"]["registry"]
    assert r["version"] == "1" and r["decision"]["promoted"] and r["approval"] is None, weeks["log"][-4000:]
    assert "approval.state" not in _tags(weeks, "1")


def test_a_waiting_challenger_is_listed_and_rejected_from_the_cli_while_the_flow_polls(weeks: dict[str, Any]) -> None:
    a = weeks["answers"]
    assert a.get("waiting"), f"v2 never waited: {weeks['log'][-4000:]}"
    w = next(e for e in a["waiting"] if e["version"] == "2")
    assert w["champion"] == "1" and w["metric"] == "psnr"
    assert isinstance(w["metrics"]["psnr"], float) and isinstance(w["champion_metrics"]["psnr"], float)
    assert set(w["per_category"]) == set(CATEGORIES) == set(w["champion_per_category"])
    assert w["drift"] is not None and w["drift"]["new_categories"] == []
    assert w["lineage"]["key"] and w["run_id"] and w["requested_at"] < w["deadline"]
    # the webhook told the reviewers where to answer
    asked = [e for e in weeks["events"] if e["event"] == "approval-requested" and e["version"] == "2"]
    assert asked and asked[0]["url"] == "http://shop.test:8000/models", weeks["events"]
    # the empty reason is a one-line error
    assert a["empty_reason"]["code"] == 2 and "needs a reason" in a["empty_reason"]["output"]
    assert a["reject"]["code"] == 0, a["reject"]["output"]
    assert "rejected by carol" in a["reject"]["output"]
    r = weeks["results"]["week2"]["registry"]
    assert r["version"] == "2" and not r["decision"]["promoted"]
    assert r["approval"]["state"] == "rejected" and r["approval"]["by"] == "carol"
    tags = _tags(weeks, "2")
    record = json.loads(tags["promotion.record"])
    assert tags["promotion.decision"] == "rejected" and not record["promoted"]
    assert record["reason"] == "rejected by carol: bags look blurry"
    assert record["approval"]["by"] == "carol" and record["approval"]["at"] and record["evidence"]["champion"]
    assert _champion(weeks) == "1"
    assert "approval rejected by carol; kept the champion" in weeks["log"]


def test_a_user_without_permission_cannot_approve(weeks: dict[str, Any]) -> None:
    a = weeks["answers"]
    assert "'mallory' may not answer" in a["mallory"], a
    assert "2" in a["still_waiting"]  # the refused approval changed nothing


def test_an_unchanged_week_after_a_rejection_is_skipped(weeks: dict[str, Any]) -> None:
    r = weeks["results"]["week3"]["registry"]
    assert r["skipped"] and r["same_as"] == "2", r
    assert r["reason"].startswith("skipped: nothing changed since v2 (rejected by carol at ")
    assert "bags look blurry" in r["reason"]
    assert not (weeks["root"] / "train" / "restore" / "week3").exists()


def test_an_unanswered_challenger_times_out_and_is_not_promoted(weeks: dict[str, Any]) -> None:
    r = weeks["results"]["timeout"]["registry"]
    assert r["version"] == "3" and r["approval"]["state"] == "timed_out" and not r["decision"]["promoted"], r
    tags = _tags(weeks, "3")
    assert tags["approval.state"] == "timed_out" and tags["promotion.decision"] == "timed_out"
    assert json.loads(tags["promotion.record"])["reason"].startswith("approval timed out")
    assert _champion(weeks) == "1"


def test_a_refusal_by_the_absolute_bar_with_a_champion_keeps_its_reason(weeks: dict[str, Any]) -> None:
    r = weeks["results"]["bar"]["registry"]
    d = r["decision"]
    assert r["version"] == "4" and not d["promoted"] and r["approval"] is None, r  # refused before any approval
    assert "fails the absolute bar" in d["reason"] and "score again" not in d["reason"], d
    ev = r["evidence"]
    assert ev["refused_by"] == "absolute" and ev["champion"]["version"] == "1"
    assert f"(champion v1 on the same set: psnr {ev['champion']['psnr']:.4g})" in d["reason"]
    assert ev["categories"]["new"] == [] and ev["categories"]["removed"] == []
    assert "approval.state" not in _tags(weeks, "4")
    # promoting it by hand later gives the same reason, not an instruction to re-score
    p = subprocess.run(
        [str(BIN / "productgen"), "registry", "promote", "restore", "--version", "4", "--params", "params.yaml"],
        cwd=weeks["root"],
        env=weeks["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and "fails the absolute bar" in p.stdout and "--rescore" not in p.stdout, p.stdout
    # ... also once the champion has moved since (the GAN case of issue 21: the refusal became "score again")
    forced = subprocess.run(
        [str(BIN / "productgen"), "registry", "promote", "restore", "--version", "2", "--force"],
        cwd=weeks["root"],
        env=weeks["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert forced.returncode == 0 and "PROMOTED" in forced.stdout, forced.stdout + forced.stderr
    p = subprocess.run(
        [str(BIN / "productgen"), "registry", "promote", "restore", "--version", "4", "--params", "params.yaml"],
        cwd=weeks["root"],
        env=weeks["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0 and "fails the absolute bar" in p.stdout and "--rescore" not in p.stdout, p.stdout
    assert "judged against champion v1; the champion is now v2" in p.stdout
    record = json.loads(_tags(weeks, "4")["promotion.record"])
    assert "fails the absolute bar" in record["reason"] and record["evidence"]["champion"]["psnr"] is not None
    # and the same recipe again is skipped with that decision
    again = weeks["results"]["bar-again"]["registry"]
    assert again["skipped"] and again["reason"].startswith("skipped: nothing changed since v4 (rejected by the gate: ")


def test_the_waiting_list_is_empty_and_the_cli_errors_are_one_line(weeks: dict[str, Any]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "productgen"), "registry", *args],
            cwd=weeks["root"],
            env=weeks["env"],
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert cli("waiting", "restore").stdout.strip() == "nothing waits for approval"
    gone = cli("approve", "restore", "--version", "2", "--user", "carol")
    assert gone.returncode == 2 and "not waiting for approval (state: rejected)" in gone.stderr
    assert "Traceback" not in gone.stderr and len(gone.stderr.strip().splitlines()) == 1
    hist = cli("history", "restore").stdout
    assert "rejected by carol: bags look blurry" in hist and "approval timed out" in hist
    print(f"driver: {weeks['seconds']:.0f} s")
