"""The page in this test process: ``create_app`` under uvicorn on a loopback port, with the proxy settings of
``productgen web`` (X-Forwarded-For trusted from loopback), for tests that need their own store and settings."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.web.conftest import free_port

OTHER, OTHER_PASSWORD = "bob", "bob's long password"


@contextlib.contextmanager
def serving(params: Path, tmp: Path, tracking_uri: str, **web: Any) -> Iterator[str]:
    """``create_app`` under uvicorn in this process (a thread) on a free loopback port; ``web`` overrides."""
    import uvicorn

    from productgen.config import load_params
    from productgen.web.app import create_app

    p = load_params(params, {f"web.{k}": v for k, v in web.items()})
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    port = free_port()
    app = create_app(p, users_file=tmp / "users.txt", cache_dir=tmp / "cache", warm=False)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",  # as `productgen web` runs it
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the page did not start"
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(20)
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
