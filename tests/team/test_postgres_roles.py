"""infra/postgres/init-databases.sh against a real PostgreSQL (Debian's package, started as in servers.py): one
login role per service, each able to use its own database(s) and unable to connect to any other, the superuser
kept for administration; the example env file's placeholders refused before anything is created."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.team import servers

pytestmark = pytest.mark.team

ROLES = {"mlflow": ("mlflow", "mlflow_auth"), "prefect": ("prefect",), "optuna": ("optuna",)}


def test_each_service_role_reaches_only_its_databases() -> None:
    root = Path(tempfile.mkdtemp(prefix="productgen-pgroles-"))  # not under pytest's 0700 folder: postgres reads it
    try:
        pg = servers.start_postgres(root, ())
    except servers.Unavailable as err:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(str(err))
    import psycopg

    try:
        env = {
            "PATH": f"{servers.postgres_bindir()}{os.pathsep}{os.environ['PATH']}",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(pg.port),
            "PGPASSWORD": pg.password,
            "POSTGRES_USER": pg.user,
            "POSTGRES_PASSWORD": pg.password,
            "MLFLOW_DB_PASSWORD": "change-me-mlflow-db",
            "PREFECT_DB_PASSWORD": "prefect-secret-1",
            "OPTUNA_DB_PASSWORD": "optuna-secret-1",
        }
        script = ["sh", str(ROOT / "infra" / "postgres" / "init-databases.sh")]
        refused = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "MLFLOW_DB_PASSWORD still holds the example placeholder" in refused.stderr
        env["MLFLOW_DB_PASSWORD"] = "mlflow-secret-1"
        done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        all_dbs = {db for dbs in ROLES.values() for db in dbs} | {"postgres"}
        for role, own in ROLES.items():
            for db in sorted(all_dbs):
                url = f"postgresql://{role}:{env[role.upper() + '_DB_PASSWORD']}@127.0.0.1:{pg.port}/{db}"
                if db in own:
                    with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
                        c.execute("CREATE TABLE owned (x int)")  # the owner can build its schema
                        assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (
                            False,
                        )
                else:
                    with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
                        psycopg.connect(url, connect_timeout=5).close()
    finally:
        pg.server.stop()
        shutil.rmtree(root, ignore_errors=True)
