"""Access control on the team servers (MLflow's basic-auth app, Prefect's auth string, S3 access keys), and a
`dvc push` / `dvc pull` round trip through the S3 remote into a fresh clone."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN
from tests.team import servers

pytestmark = pytest.mark.team


def call(url: str, body: dict[str, Any] | None = None, auth: tuple[str, str] | None = None) -> tuple[int, Any]:
    """(status, JSON or text) of a GET (or a POST with a JSON body)."""
    req = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with servers.LOOPBACK.open(req, timeout=30) as r:  # never through a proxy (see servers.LOOPBACK)
            status, data = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode(errors="replace")


def test_mlflow_server_refuses_unauthenticated_and_wrong_credentials(stack: servers.Stack) -> None:
    api = stack.mlflow.url + "/api/2.0/mlflow"
    admin = (stack.mlflow.username, stack.mlflow.password)
    status, body = call(api + "/experiments/search?max_results=5")
    assert status == 401 and "not authenticated" in str(body).lower()
    assert call(api + "/experiments/search?max_results=5", auth=("admin", "wrong-password-123"))[0] == 401
    assert call(api + "/registered-models/search", auth=None)[0] == 401  # the registry as well
    assert call(api + "/experiments/search?max_results=5", auth=admin)[0] == 200
    # The MLflow client without credentials is refused too (what a misconfigured worker would see).
    env = servers.base_env(MLFLOW_TRACKING_URI=stack.mlflow.url)
    code = "import mlflow; mlflow.MlflowClient().search_experiments()"
    p = subprocess.run([str(BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=120)
    err = p.stderr[-3000:]
    assert p.returncode != 0 and ("401" in err or "authenticated" in err.lower()), err


def test_mlflow_users_read_by_default_and_cannot_delete_others_experiments(stack: servers.Stack) -> None:
    api = stack.mlflow.url + "/api/2.0/mlflow"
    admin = (stack.mlflow.username, stack.mlflow.password)
    status, made = call(api + "/experiments/create", {"name": "access-check"}, auth=admin)
    assert status == 200, made
    user = ("analyst", "analyst-password-123")
    status, body = call(api + "/users/create", {"username": user[0], "password": user[1]}, auth=admin)
    assert status == 200, body
    assert call(api + f"/experiments/get?experiment_id={made['experiment_id']}", auth=user)[0] == 200  # READ
    status, body = call(api + "/experiments/delete", {"experiment_id": made["experiment_id"]}, auth=user)
    assert status == 403, body
    assert (
        call(api + f"/experiments/get?experiment_id={made['experiment_id']}", auth=admin)[1]["experiment"][
            "lifecycle_stage"
        ]
        == "active"
    )
    assert call(api + "/users/create", {"username": "x", "password": "x-password-1234"}, auth=user)[0] == 403


def test_prefect_server_refuses_requests_without_its_auth_string(stack: servers.Stack) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        stack.prefect.api("POST", "/flows/filter", {}, auth=False)
    assert err.value.code == 401
    wrong = servers.Prefect(stack.prefect.server, stack.prefect.api_url, "admin:wrong", stack.prefect.home)
    with pytest.raises(urllib.error.HTTPError) as err:
        wrong.api("POST", "/flows/filter", {})
    assert err.value.code == 401
    assert isinstance(stack.prefect.api("POST", "/flows/filter", {}), list)


def test_s3_refuses_unknown_keys_and_anonymous_reads(stack: servers.Stack) -> None:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        stack.s3.client("unknown-key", "unknown-secret-000").list_objects_v2(Bucket="mlflow")
    assert err.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied", "SignatureDoesNotMatch")
    status = servers.http_status(f"{stack.s3.endpoint}/mlflow/")
    assert status in (401, 403)


def _sh(*args: str, cwd: Path, env: dict[str, str]) -> str:
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, f"{' '.join(args)} ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_dvc_push_and_pull_round_trip_through_the_s3_remote(stack: servers.Stack, tmp_path: Path) -> None:
    """Credentials in .dvc/config.local (git-ignored) in one checkout, from the environment in the other."""
    env = servers.base_env(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@productgen.invalid",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@productgen.invalid",
    )
    repo = tmp_path / "project"
    (repo / "data" / "shop").mkdir(parents=True)
    for i in range(5):
        (repo / "data" / "shop" / f"{i}.bin").write_bytes(os.urandom(2000 + i))
    dvc = str(BIN / "dvc")
    _sh("git", "init", "-q", cwd=repo, env=env)
    _sh(dvc, "init", "-q", cwd=repo, env=env)
    _sh(dvc, "remote", "add", "-d", "team", "s3://dvc/productgen", cwd=repo, env=env)
    _sh(dvc, "remote", "modify", "team", "endpointurl", stack.s3.endpoint, cwd=repo, env=env)
    _sh(dvc, "remote", "modify", "--local", "team", "access_key_id", stack.s3.access_key, cwd=repo, env=env)
    _sh(dvc, "remote", "modify", "--local", "team", "secret_access_key", stack.s3.secret_key, cwd=repo, env=env)
    _sh(dvc, "add", "-q", "data", cwd=repo, env=env)
    _sh("git", "add", "-A", cwd=repo, env=env)
    _sh("git", "commit", "-q", "-m", "data", cwd=repo, env=env)
    assert stack.s3.secret_key not in _sh("git", "show", "HEAD", cwd=repo, env=env)  # the secret stays local
    _sh(dvc, "push", "-q", cwd=repo, env=env)
    keys = stack.s3.keys("dvc", "productgen/")
    assert len(keys) >= 5, keys  # one object per file (plus the directory listing)

    clone = tmp_path / "clone"
    _sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path, env=env)
    assert not (clone / "data").exists()
    shutil.rmtree(repo / ".dvc" / "cache")  # nothing to fall back on but the S3 remote
    _sh(dvc, "pull", "-q", cwd=clone, env={**env, **stack.s3.env()})
    assert _digest(clone / "data") == _digest(repo / "data")
