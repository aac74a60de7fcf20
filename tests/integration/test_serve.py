"""Real REST serving: a GAN trained and registered through the CLI, aliased ``champion``, served with
``mlflow models serve --env-manager local`` on a loopback port, and asked for images over HTTP. Bad input must
come back as HTTP 400 with a message naming the problem. The server runs in its own process group, which is
always killed at the end and checked to be gone."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import BIN, run_cli

HOST = "127.0.0.1"
START_TIMEOUT = 120.0  # seconds for the server to answer /ping
COLUMNS = ["category", "count", "seed"]
# Loopback only, and never through a proxy from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def request(
    url: str, body: bytes | None = None, content_type: str = "application/json", timeout: float = 60
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    if body is not None:
        req.add_header("Content-Type", content_type)
    try:
        with HTTP.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def invoke(base: str, payload: Any) -> tuple[int, Any]:
    status, raw = request(f"{base}/invocations", json.dumps(payload).encode())
    return status, json.loads(raw)


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the server's whole process group (mlflow CLI + uvicorn), escalating to SIGKILL; check it is gone."""
    pgid = proc.pid  # start_new_session=True: the group id is the leader's pid
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + grace  # the uvicorn child is reaped by init once the CLI is gone
        while not _group_gone(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_gone(pgid):
            return
    raise AssertionError(f"server process group {pgid} still alive after SIGKILL")


@contextmanager
def serving(model_uri: str, workdir: Path) -> Iterator[str]:
    """``mlflow models serve`` on a free loopback port; yields the base URL once /ping answers 200."""
    port = free_port()
    log = workdir / f"serve-{port}.log"
    env = dict(os.environ)
    # --env-manager local runs `uvicorn` from PATH: it must be this virtualenv's.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true")
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://{HOST}:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow models serve exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                if request(f"{base}/ping", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy after {START_TIMEOUT:.0f} s:\n{_log_tail(log)}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def registered(params: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A tiny GAN trained and registered through the real CLI, its version aliased ``champion``."""
    import mlflow
    from mlflow import MlflowClient

    name = f"productgen-gan-serve-{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("serve")
    p = run_cli(
        "train",
        "gan",
        "--params",
        str(params),
        "--max-steps",
        "2",
        "--out",
        str(root / "run"),
        "-q",
        "--register",
        name,
    )
    assert p.returncode == 0, p.stderr
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    (version,) = client.search_model_versions(f"name='{name}'")
    client.set_registered_model_alias(name, "champion", version.version)
    assert client.get_model_version_by_alias(name, "champion").version == version.version
    return name, root


@pytest.fixture(scope="module")
def champion(registered: tuple[str, Path]) -> Iterator[str]:
    name, root = registered
    with serving(f"models:/{name}@champion", root / "champion") as base:
        yield base


def decode(predictions: list[dict[str, Any]]) -> list[Image.Image]:
    images = []
    for row in predictions:
        raw = base64.b64decode(row["image"], validate=True)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        im = Image.open(io.BytesIO(raw))
        im.load()
        images.append(im)
    return images


def test_health_and_generation_in_both_dataframe_formats(champion: str) -> None:
    assert request(f"{champion}/ping")[0] == 200
    assert request(f"{champion}/health")[0] == 200
    rows = [["shoes", 3, 7], ["bags", 2, 1]]
    status, split = invoke(champion, {"dataframe_split": {"columns": COLUMNS, "data": rows}})
    assert status == 200, split
    preds = split["predictions"]
    assert [(p["category"], p["seed"], p["index"]) for p in preds] == [
        ("shoes", 7, 0),
        ("shoes", 7, 1),
        ("shoes", 7, 2),
        ("bags", 1, 0),
        ("bags", 1, 1),
    ]
    images = decode(preds)
    assert all(im.format == "PNG" and im.size == (28, 28) and im.mode == "L" for im in images)
    assert len({im.tobytes() for im in images}) == 5  # different noise per image

    status, records = invoke(champion, {"dataframe_records": [dict(zip(COLUMNS, r)) for r in rows]})
    assert status == 200, records
    assert records == split  # same rows, same seeds: the same bytes whatever the JSON layout


def test_same_seed_same_bytes(champion: str) -> None:
    body = {"dataframe_records": [{"category": "shirts", "count": 4, "seed": 123}]}
    first, second = invoke(champion, body), invoke(champion, body)
    assert first[0] == second[0] == 200
    assert [p["image"] for p in first[1]["predictions"]] == [p["image"] for p in second[1]["predictions"]]
    other = invoke(champion, {"dataframe_records": [{"category": "shirts", "count": 4, "seed": 124}]})[1]
    assert other["predictions"][0]["image"] != first[1]["predictions"][0]["image"]
    # the limits themselves are allowed: 64 per row, 256 in one request
    status, full = invoke(
        champion, {"dataframe_records": [{"category": "bags", "count": 64, "seed": s} for s in range(4)]}
    )
    assert status == 200 and len(full["predictions"]) == 256


def _records(*rows: tuple[Any, Any, Any]) -> bytes:
    return json.dumps({"dataframe_records": [dict(zip(COLUMNS, r)) for r in rows]}).encode()


BAD = {
    "unknown category": (_records(("hats", 1, 0)), "unknown category 'hats'"),
    "missing category": (_records((None, 1, 0)), "category is missing"),
    "count over 64": (_records(("shoes", 65, 0)), "count must be between 1 and 64"),
    "count 0": (_records(("shoes", 0, 0)), "count must be between 1 and 64"),
    "count negative": (_records(("shoes", -3, 0)), "count must be between 1 and 64"),
    "over 256 images": (_records(*[("shoes", 64, s) for s in range(5)]), "too many images: 320"),
    "too many rows": (_records(*[("shoes", 1, s) for s in range(257)]), "too many rows: 257"),
    "missing column": (
        json.dumps({"dataframe_records": [{"category": "shoes", "count": 1}]}).encode(),
        "missing inputs ['seed']",
    ),
    "count not a number": (_records(("shoes", "two", 0)), "column count"),
    "seed null": (_records(("shoes", 1, None)), "column seed"),
    "count too large for int64": (_records(("shoes", 10**30, 0)), "column count"),
    "not JSON": (b"category=shoes&count=1", "valid JSON"),
    "JSON list": (b"[1, 2]", "JSON dictionary"),
    "no input field": (b'{"rows": [["shoes", 1, 0]]}', "exactly one of the input fields"),
    "split shape": (
        json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [["shoes", 1]]}}).encode(),
        "dataframe_split",
    ),
    "no rows": (json.dumps({"dataframe_split": {"columns": COLUMNS, "data": []}}).encode(), "no rows"),
}


def test_bad_input_is_400_with_a_message(champion: str) -> None:
    failures = []
    for case, (body, fragment) in BAD.items():
        status, raw = request(f"{champion}/invocations", body)
        try:
            message = json.loads(raw)["message"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode(errors="replace")
        if status != 400 or fragment not in message:
            failures.append(f"{case}: HTTP {status}, expected 400 with {fragment!r}: {message[:300]}")
    assert not failures, "\n".join(failures)
    # a content type the server cannot read is 415, not 500
    status, raw = request(f"{champion}/invocations", b"shoes,1,0", content_type="text/plain")
    assert status == 415 and b"content types" in raw
    assert request(f"{champion}/ping")[0] == 200  # still serving


def test_version_uri_serves_the_same_model(registered: tuple[str, Path], champion: str) -> None:
    name, root = registered
    body = {"dataframe_split": {"columns": COLUMNS, "data": [["shoes", 2, 5]]}}
    status, expected = invoke(champion, body)
    assert status == 200
    with serving(f"models:/{name}/1", root / "version") as base:
        assert invoke(base, body) == (200, expected)
