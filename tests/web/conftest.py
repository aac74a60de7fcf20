"""The web page against real components: tiny models trained and registered in a throw-away MLflow store of
its own (so other tests' registrations cannot move these champions), ``productgen web`` started as a real
uvicorn server on loopback, and Debian's chromium driven by pytest-playwright (never ``playwright install``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
USER, PASSWORD = "alice", "correct horse battery"

EXTRA = """
restore:
  channels: 8
  max_channels: 16
  levels: 2
  warmup_steps: 0
translate:
  g_channels: 8
  d_channels: 8
  max_channels: 32
  resnet_blocks: 2
style:
  image_size: 32
  style_size: 48
  channels: 8
  residual_blocks: 1
  decoder_channels: 8
  adain_styles: [coffee, brick]
web:
  max_file_bytes: 262144
  max_request_bytes: 4194304
  max_files: 16
  alias_check_seconds: 0.5
  workers: 1
  max_pending: 2
"""
EVAL = {"n_real": 36, "n_fake": 36, "extractor": {"sha": "a16e4d89c0ec"}}
CONTENT_HASH = "c" * 64


@dataclass
class Store:
    uri: str
    root: Path
    params: Path
    users: Path


@contextlib.contextmanager
def using(store: Store) -> Iterator[None]:
    """This process talks to the web tests' MLflow store while inside (the session's own store otherwise)."""
    import mlflow

    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    mlflow.set_tracking_uri(store.uri)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
            mlflow.set_tracking_uri(old)


@pytest.fixture(scope="session")
def store(params: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    from productgen.web.auth import add_user

    root = tmp_path_factory.mktemp("web")
    path = root / "params.yaml"
    path.write_text(params.read_text() + EXTRA)
    users = root / "users.txt"
    add_user(users, USER, PASSWORD)
    uri = f"sqlite:///{root}/mlflow.db"
    from mlflow import MlflowClient

    MlflowClient(uri).search_experiments()  # create the tables once, before the server and the trainer both try
    return Store(uri, root, path, users)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Never through a proxy: urlopen's global opener keeps the proxy variables of the first call, and a test elsewhere
# points them at a dead proxy (to prove it works offline); in one session that made every /health here fail.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with LOOPBACK.open(url, timeout=timeout) as r:  # noqa: S310 (loopback)
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="session")
def server(store: Store) -> Iterator[str]:
    """``productgen web`` on a free loopback port, started before the models exist: it must pick them up."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PRODUCTGEN_WEB_USERS", None)
    log = open(store.root / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            str(BIN / "productgen"),
            "web",
            "--params",
            str(store.params),
            "--port",
            str(port),
            "--users-file",
            str(store.users),
            "--log-level",
            "warning",
        ],
        cwd=store.root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"productgen web exited {proc.returncode}:\n{(store.root / 'server.log').read_text()}"
                )
            with contextlib.suppress(OSError):
                if get(base + "/health", 1.0)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("productgen web did not answer /health within 90 s")
            time.sleep(0.2)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        text = (store.root / "server.log").read_text(errors="replace")
        assert "Traceback" not in text or "error id" in text, text[-4000:]


def _train_and_register(
    store: Store, task: str, metrics: dict[str, Any], force: bool = False, overrides: dict[str, Any] | None = None
) -> tuple[str, str]:
    """Train ``task`` for 2 steps with MLflow tracking (lineage tags and all), register it with ``metrics`` as its
    evaluation and promote it through the gate (``force``: by hand, as ``registry promote --force``); returns
    (version, model URI)."""
    from productgen.config import load_params
    from productgen.pipeline.train import train
    from productgen.registry import promotion as registry

    p = load_params(
        store.params,
        {
            "train.out": str(store.root / "train" / task),
            "train.max_steps": 2,
            "train.checkpoint_every": 1000,
            "train.sample_every": 2,
            **(overrides or {}),
        },
    )
    result = train(p, task, show_progress=False, track=True)
    version = registry.register_challenger(task, result.model_uri, {**EVAL, **metrics}, CONTENT_HASH, "test")
    from productgen.web.app import _gate_settings

    decision = registry.promote(task, version, 0.0, force=force, **_gate_settings(registry.promote, p))
    assert decision.promoted, decision.reason
    return version, str(result.model_uri)


@pytest.fixture(scope="session")
def champions(store: Store, server: str) -> dict[str, str]:
    """Tiny champions of gan, restore (denoise), pix2pix, cyclegan (bags <-> shoes) and adain, plus a better GAN
    challenger (v2)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with using(store):
            from productgen.registry import promotion as registry

            out = {}
            gan, gan_uri = _train_and_register(store, "gan", {"fid": 40.0})
            out["gan"] = gan
            out["restore"] = _train_and_register(
                store, "restore", {"psnr": 30.0, "gain_db": 5.0, "view": "noise25", "images": 36}
            )[0]
            out["pix2pix"] = _train_and_register(store, "pix2pix", {"psnr": 20.0, "gain_db": 5.0, "images": 36})[0]
            out["cyclegan"] = _train_and_register(
                store,
                "cyclegan",
                {"fid": 90.0, "fid_identity": 120.0, "fid_gain": 30.0},
                overrides={"translate.domain_a": "bags", "translate.domain_b": "shoes"},
            )[0]
            out["adain"] = _train_and_register(store, "adain", {"style_score": 0.5, "content_ssim": 0.7})[0]
            # a better challenger of the GAN (same weights, a better evaluation): the Models page promotes it
            out["gan-challenger"] = registry.register_challenger(
                "gan", gan_uri, {**EVAL, "fid": 30.0}, CONTENT_HASH, "test"
            )
    finally:
        torch.set_num_threads(threads)
    deadline = time.monotonic() + 60  # the server loads them in the background once its alias check sees them
    import json

    while time.monotonic() < deadline:
        body = json.loads(get(server + "/health")[1])
        if len(body["champions"]) >= 5:
            break
        time.sleep(0.2)
    return out


@pytest.fixture(scope="session")
def base_url(server: str) -> str:
    return server


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's chromium through executable_path (``playwright install`` would download a browser)."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium; make test installs it where it can)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "headless": True,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--disable-component-update",
        ],
    }
