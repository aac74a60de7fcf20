"""Session fixtures of the team suite: the servers of infra/compose.yaml started natively on loopback once per
session (see servers.py), stopped by process group at the end; a test that needs them is skipped (with the
reason) only when a server binary truly cannot be obtained here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.team import servers


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Stack]:
    try:
        servers.postgres_bindir()
        servers.weed_binary()
    except servers.Unavailable as err:
        pytest.skip(str(err))
    import tempfile

    # Not under pytest's tmp folder: that one is private to root (0700) and PostgreSQL runs as another user.
    root = Path(tempfile.mkdtemp(prefix="productgen-team-"))
    s = servers.start_stack(root)
    try:
        yield s
    finally:
        servers.stop_stack(s)


@pytest.fixture
def on_team_servers(stack: servers.Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[servers.Stack]:
    """This process's MLflow client (registry, tracking) pointed at the team tracking server, as a user's is."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI", "")
    for key, value in {**stack.mlflow.client_env(), **stack.s3.env()}.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(stack.mlflow.url)
    yield stack
    mlflow.set_tracking_uri(before)  # the session's own store again for the tests that follow
