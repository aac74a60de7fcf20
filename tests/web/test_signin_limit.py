"""Sign-in cannot be guessed at speed (issue 21, item 4): failures are counted per user name and per client
address; from the 6th attempt in the window the page answers 429 with ``Retry-After`` (growing, capped), even to
the right password, while other names from other addresses still sign in. Both backends: the users file, and the
team deployment's MLflow users (a real basic-auth MLflow server on loopback).

The page runs as a real uvicorn server on 127.0.0.1 with the proxy settings of ``productgen web`` (X-Forwarded-For
trusted from loopback, as behind the deployment's TLS proxy): that is how a client address other than 127.0.0.1
reaches the page here. No mocks: real scrypt checks, real HTTP, real time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.conftest import PASSWORD, USER, free_port, get
from tests.web.inprocess import OTHER, OTHER_PASSWORD, serving

BIN = Path(sys.executable).parent


@pytest.fixture
def users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from productgen.web.auth import add_user

    monkeypatch.delenv("PRODUCTGEN_WEB_USERS", raising=False)
    add_user(tmp_path / "users.txt", USER, PASSWORD)
    add_user(tmp_path / "users.txt", OTHER, OTHER_PASSWORD)
    return tmp_path / "users.txt"


class Browser:
    """One client (its own session cookie and CSRF token) seen by the page as coming from ``address``."""

    def __init__(self, base: str, address: str) -> None:
        self.base = base
        self.client = httpx.Client(headers={"X-Forwarded-For": address}, timeout=60)
        m = re.search(r'name="csrf_token" value="([^"]+)"', self.client.get(base + "/signin").text)
        assert m
        self.token = m.group(1)

    def sign_in(self, name: str, password: str) -> httpx.Response:
        return self.client.post(
            self.base + "/signin", data={"csrf_token": self.token, "username": name, "password": password}
        )

    def close(self) -> None:
        self.client.close()


def test_forty_wrong_passwords_get_429_from_the_sixth_and_others_still_sign_in(
    params: Path, tmp_path: Path, users: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="productgen.web")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with serving(params, tmp_path, uri) as base:  # params.yaml's settings: 5 failures in 15 min, 30 s doubling
        attacker = Browser(base, "203.0.113.9")
        t0 = time.monotonic()
        answers = [attacker.sign_in(OTHER, f"guess-{i}") for i in range(40)]
        took = time.monotonic() - t0
        codes = [r.status_code for r in answers]
        assert codes == [401] * 5 + [429] * 35, codes
        waits = [int(r.headers["Retry-After"]) for r in answers[5:]]
        assert all(0 < w <= 30 for w in waits), waits
        assert "Too many failed sign-ins" in answers[-1].text and "Traceback" not in answers[-1].text
        # the right password for the locked name, from a fresh address: still refused until Retry-After passes
        friend = Browser(base, "198.51.100.20")
        r = friend.sign_in(OTHER, OTHER_PASSWORD)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        # another user from another address signs in meanwhile
        alice = Browser(base, "198.51.100.21")
        r = alice.sign_in(USER, PASSWORD)
        assert r.status_code == 303 and r.headers["location"] == "/models", r.text[-500:]
        assert f"Signed in as {USER}" in alice.client.get(base + "/models").text
        # the locked address cannot try other names either
        r = attacker.sign_in(USER, PASSWORD)
        assert r.status_code == 429
        for b in (attacker, friend, alice):
            b.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "productgen.web"]
    assert sum(m.startswith("failed sign-in for 'bob' from 203.0.113.9") for m in messages) == 5, messages
    assert any(m.startswith("sign-in locked for 30 s (user bob)") for m in messages), messages
    assert any(m.startswith("sign-in locked for 30 s (address 203.0.113.9)") for m in messages), messages
    assert sum("sign-in refused for 'bob'" in m for m in messages) >= 35
    print(f"40 wrong passwords in {took:.2f} s")


def test_the_lock_passes_after_retry_after_and_grows_with_each_further_failure(
    params: Path, tmp_path: Path, users: Path
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with serving(
        params,
        tmp_path,
        uri,
        signin_max_failures=3,
        signin_base_delay_seconds=1.0,
        signin_max_delay_seconds=4.0,
        signin_window_seconds=120.0,
    ) as base:
        b = Browser(base, "192.0.2.50")
        assert [b.sign_in(OTHER, "nope").status_code for _ in range(3)] == [401, 401, 401]
        r = b.sign_in(OTHER, OTHER_PASSWORD)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        delays = []
        for _ in range(3):  # each failure after a lock has passed: 2 s, 4 s, 4 s (the cap)
            time.sleep(int(r.headers["Retry-After"]) + 0.2)
            assert b.sign_in(OTHER, "still wrong").status_code == 401
            r = b.sign_in(OTHER, OTHER_PASSWORD)
            assert r.status_code == 429
            delays.append(int(r.headers["Retry-After"]))
        assert delays[0] == 2 and delays[1] in (3, 4) and delays[2] in (3, 4), delays
        time.sleep(delays[-1] + 0.2)
        r = b.sign_in(OTHER, OTHER_PASSWORD)  # the lock has passed: the right password gets in
        assert r.status_code == 303, r.text[-500:]
        b.close()


# ------------------------------------------------------------------------------------ the MLflow-backed users


@pytest.fixture(scope="module")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """MLflow's basic-auth tracking server (the team deployment's sign-in backend) on sqlite, on loopback; yields
    (url, admin name, admin password)."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    password = "admin-" + secrets.token_hex(8)
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root}/auth.db\n"
        f"admin_username = admin\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    log = open(root / "mlflow.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (root / "mlflow.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                if get(url + "/health", 5.0)[0] == 200:
                    break
            assert time.monotonic() < deadline, "the MLflow server did not answer /health within 180 s"
            time.sleep(0.5)
        yield url, "admin", password
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_mlflow_users_are_limited_at_the_function_level(mlflow_auth_server: tuple[str, str, str]) -> None:
    """The limiter over :func:`check_mlflow_user` (what the page runs with ``web.auth: mlflow``)."""
    from productgen.web.auth import SignInLimiter, SignInLocked, check_mlflow_user

    url, admin, password = mlflow_auth_server
    limiter = SignInLimiter(900.0, 5, 30.0, 900.0)
    calls = []

    def verify(pw: str) -> Any:
        calls.append(pw)
        return (admin, pw) if check_mlflow_user(url, admin, pw) else None

    assert [limiter.check(admin, "203.0.113.7", lambda i=i: verify(f"wrong-{i}")) for i in range(5)] == [None] * 5
    with pytest.raises(SignInLocked) as locked:
        limiter.check(admin, "198.51.100.8", lambda: verify(password))  # the right password, another address
    assert 0 < locked.value.retry_after <= 30 and locked.value.key == f"user {admin}"
    assert len(calls) == 5  # a locked name's password is never sent to the server
    assert check_mlflow_user(url, admin, password)  # the server itself still accepts it


def test_mlflow_backed_sign_in_page_is_limited(
    params: Path, tmp_path: Path, mlflow_auth_server: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, admin, password = mlflow_auth_server
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    with serving(params, tmp_path, url, auth="mlflow") as base:
        b = Browser(base, "203.0.113.77")
        codes = [b.sign_in(admin, f"wrong-{i}").status_code for i in range(8)]
        assert codes == [401] * 5 + [429] * 3, codes
        r = b.sign_in(admin, password)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        b.close()
