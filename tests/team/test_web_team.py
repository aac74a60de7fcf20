"""The web page on the team deployment (``web.auth: mlflow``, as infra/compose.yaml's ``web`` service runs it):
``productgen web --auth mlflow`` against the real basic-auth MLflow server of tests/team. Its users sign in with
their MLflow accounts; a promotion runs with the signed-in user's own credentials, so MLflow's permissions
decide: a READ user is refused with a message and the alias stays, the admin's promotion moves it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.team import servers
from tests.team.test_access_and_dvc import call

pytestmark = pytest.mark.team
BIN = Path(sys.executable).parent
EVAL = {"n_real": 36, "n_fake": 36, "extractor": {"sha": "a16e4d89c0ec"}}


def _token(c: httpx.Client, url: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', c.get(url).text)
    assert m
    return m.group(1)


def test_team_users_sign_in_and_promote_with_their_own_permissions(
    on_team_servers: servers.Stack, params: Path, tmp_path: Path
) -> None:
    from productgen.config import load_params
    from productgen.pipeline.train import train
    from productgen.registry import promotion as registry
    from productgen.web.champions import client

    stack = on_team_servers
    name = f"productgen-gan-web-{uuid.uuid4().hex[:6]}"
    p = load_params(
        params,
        {
            "train.out": str(tmp_path / "gan"),
            "train.max_steps": 2,
            "train.checkpoint_every": 1000,
            "train.sample_every": 2,
        },
    )
    uri = train(p, "gan", show_progress=False, track=True).model_uri
    v1 = registry.register_challenger("gan", uri, {**EVAL, "fid": 40.0}, "c" * 64, "test", name=name)
    assert registry.promote("gan", v1, 0.0, name=name, cfg=p.registry).promoted
    v2 = registry.register_challenger("gan", uri, {**EVAL, "fid": 30.0}, "c" * 64, "test", name=name)
    reader = ("shopkeeper", "shopkeeper-password-123")
    admin = (stack.mlflow.username, stack.mlflow.password)
    status, body = call(
        stack.mlflow.url + "/api/2.0/mlflow/users/create", {"username": reader[0], "password": reader[1]}, auth=admin
    )
    assert status == 200 or "already exists" in str(body), body

    port = servers.free_port()
    env = {**stack.client_env(), "OMP_NUM_THREADS": "1"}
    env.pop("PRODUCTGEN_WEB_USERS", None)
    log = tmp_path / "web.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "productgen"),
                "web",
                "--params",
                str(params),
                "--port",
                str(port),
                "--auth",
                "mlflow",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if name in json.loads(httpx.get(base + "/health", timeout=5).text)["champions"]:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        form = {"task": "gan", "name": name}
        with httpx.Client(timeout=60) as c:
            r = c.post(
                base + "/signin",
                data={
                    "csrf_token": _token(c, base + "/signin"),
                    "username": reader[0],
                    "password": "wrong-password-000",
                },
            )
            assert r.status_code == 401 and "Wrong user name or password" in r.text
            r = c.post(
                base + "/signin",
                data={"csrf_token": _token(c, base + "/signin"), "username": reader[0], "password": reader[1]},
            )
            assert r.status_code == 303
            r = c.post(base + "/models/promote", data={**form, "csrf_token": _token(c, base + "/generate")})
            assert r.status_code == 400 and "refused to let shopkeeper promote" in r.text, r.text[-1500:]
        assert registry.alias_version(client(), name, "champion") == v1  # the READ user changed nothing
        with httpx.Client(timeout=60) as c:
            r = c.post(
                base + "/signin",
                data={"csrf_token": _token(c, base + "/signin"), "username": admin[0], "password": admin[1]},
            )
            assert r.status_code == 303
            r = c.post(
                base + "/models/promote",
                data={**form, "csrf_token": _token(c, base + "/generate")},
                follow_redirects=True,
            )
            assert r.status_code == 200 and f"{name} v{v2}: promoted" in r.text, r.text[-1500:]
        assert registry.alias_version(client(), name, "champion") == v2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
