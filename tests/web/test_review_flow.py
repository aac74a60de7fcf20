"""End to end (issue 21, item 5): the real retrain flow (Prefect ephemeral mode, own PREFECT_HOME, a real MLflow
SQLite store, real DVC) with ``registry.approval: required`` waits for a person; the Models page shows its
challenger beside the champion, a signed-in user approves it in a real browser, the flow's poll sees the answer
and the challenger is promoted through the gate.

Week 1 (approval auto) makes v1 champion; week 2 (approval required) registers v2, which waits. The flow runs in a
subprocess (tests/integration/test_retrain_loop.py's driver); this process serves the page on 127.0.0.1 and
drives chromium.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from productgen.metrics.extractors import installed_tf_inception
from tests.conftest import BIN, ROOT
from tests.integration.test_retrain_loop import DRIVER
from tests.web.conftest import PASSWORD, USER, Store, using
from tests.web.inprocess import serving

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(installed_tf_inception() is None, reason="TF-Inception weights missing (make setup)"),
]

CATEGORIES = ("bags", "shoes", "shirts")
# test_approval_loop.py's settings: fp32, margins wide open so that the person's answer decides, not how well 40
# CPU steps trained; approval asked in week 2 only.
PARAMS = """\
data: {{source: folder, input: {root}/shop, out: {root}/prepared, mode: L, resolution: 28,
        split: {{train: 0.6, val: 0.1, test: 0.3}}}}
validation: {{out: {root}/validation, min_images_per_category: 5, max_split_deviation: 0.1}}
train: {{out: "{root}/train/{{task}}", batch_size: 8, max_steps: 40, log_every: 20, sample_every: 40,
         checkpoint_every: 40, device: cpu, precision: fp32}}
restore: {{channels: 8, max_channels: 16, view: noise25, lr: 0.003, warmup_steps: 0}}
evaluate: {{out: "{root}/eval/{{task}}", model: "{root}/train/{{task}}/model", device: cpu}}
registry: {{psnr_margin: -100.0, category_psnr_margin: 100.0, gain_db_min: -100.0}}
retrain: {{dvc_repo: {root}, drift: {{max_per_category: 6, min_fid_images: 50, device: cpu}}}}
"""
REQUIRED = "registry: {approval: required, approval_timeout_hours: 1.0, approval_poll_seconds: 0.5}\n"


@pytest.fixture
def browser_context_args() -> dict[str, Any]:
    return {}


def test_the_flow_waits_is_approved_from_the_page_and_promotes(page: Any, tmp_path: Path) -> None:
    from productgen.registry import approval
    from productgen.registry import promotion as registry
    from productgen.web.auth import add_user
    from productgen.web.champions import client

    root = tmp_path
    for cat in CATEGORIES:
        (root / "shop" / cat).mkdir(parents=True)
    (root / "params.yaml").write_text(PARAMS.format(root=root))
    (root / "required.yaml").write_text(REQUIRED)
    add_user(root / "users.txt", USER, PASSWORD)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (
        ["git", "init", "-q"],
        [str(BIN / "dvc"), "init", "-q"],
        [str(BIN / "dvc"), "remote", "add", "-d", "local", str(root / "remote")],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "project"],
    ):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    k = {c: 1000 * i for i, c in enumerate(CATEGORIES)}
    plan = [
        {"name": "week1", "grow": [[c, k[c], 30] for c in CATEGORIES]},
        {"name": "week2", "grow": [[c, k[c] + 30, 20] for c in CATEGORIES], "profile": str(root / "required.yaml")},
    ]
    (root / "plan.json").write_text(json.dumps(plan))
    store = Store(f"sqlite:///{root}/mlflow.db", root, root / "params.yaml", root / "users.txt")
    run_env = {
        **env,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": store.uri,
        "PRODUCTGEN_FID_STATS_DIR": str(root / "fid-cache"),
    }
    for key in ("PREFECT_API_URL", "PRODUCTGEN_WEB_USERS", "PRODUCTGEN_NOTIFY_URL"):
        run_env.pop(key, None)
    log = open(root / "flow.log", "w")  # noqa: SIM115 (closed below)
    flow = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(ROOT / "flows"), str(root), str(root / "plan.json"), str(root / "out")],
        cwd=root,
        env=run_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 900
        with using(store):
            while True:  # the flow registers v2 and waits for a person
                assert flow.poll() is None, (root / "flow.log").read_text()[-6000:]
                assert time.monotonic() < deadline, "the flow did not ask for approval within 900 s"
                try:
                    waiting = approval.waiting("restore")
                except Exception:  # noqa: BLE001 - not registered yet
                    waiting = []
                if waiting:
                    break
                time.sleep(1.0)
            (entry,) = waiting
            version = str(entry["version"])
            assert registry.alias_version(client(), "productgen-restore", "champion") == "1"
        with serving(root / "params.yaml", root, store.uri) as base:
            page.goto(base + "/models")
            review = page.locator(f"#review-productgen-restore-v{version}")
            assert "Waiting for approval" in review.inner_text()
            assert review.locator("table.compare img").count() >= 3  # the flow's own test photos through both
            page.goto(base + "/signin")
            page.fill("#username", USER)
            page.fill("#password", PASSWORD)
            page.click("#go")
            page.wait_for_selector("#flash")
            page.locator(f"#review-productgen-restore-v{version} button.approve").click()
            page.wait_for_selector("#flash")
            flash = page.inner_text("#flash")
            assert f"productgen-restore v{version}: approved by {USER}; promoted" in flash, flash
        flow.wait(timeout=600)  # the flow's poll sees the answer and ends
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait(30)
        log.close()
    text = (root / "flow.log").read_text()
    assert flow.returncode == 0, text[-6000:]
    week2 = json.loads((root / "out").read_text())["week2"]["registry"]
    assert week2["approval"]["state"] == "approved" and week2["approval"]["by"] == USER, week2
    assert week2["decision"]["promoted"] is True, week2
    with using(store):
        assert registry.alias_version(client(), "productgen-restore", "champion") == version
