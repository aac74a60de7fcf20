"""infra/compose.yaml read as Docker Compose would (YAML anchors and merge keys, ${VAR} interpolation from the
env file), since `docker compose config` does not run on these machines: every service of the team deployment
is there with its image, ports, environment, volumes and health check; dependencies wait on health; every
variable is documented in infra/.env.example; no secret is written into the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.team

INFRA = ROOT / "infra"
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SERVICES = {  # service -> (container port published, or None; what its health check must mention)
    "postgres": ("5432", "pg_isready"),
    "minio": ("9000", "mc"),
    "mlflow": ("5000", "/health"),
    "prefect-server": ("4200", "/api/health"),
    "prefect-worker": (None, "/health"),
    "gpu-worker": (None, "/health"),
    "web": ("8000", "/health"),
}


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as Compose reads them (an unquoted value ends at ' #')."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.split(" #", 1)[0].strip()
    return out


def interpolate(node: Any, env: dict[str, str], used: set[str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ (a literal $)."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, used) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        used.add(name)
        value = env.get(name)
        if op in (":-", "-") and not value:
            return arg
        if op in (":?", "?") and not value:
            raise AssertionError(f"required variable {name} is not set: {arg}")
        return value or ""

    return VAR.sub(sub, node.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load((INFRA / "compose.yaml").read_text())  # merge keys (<<) resolved here
    used: set[str] = set()
    config = interpolate(raw, env_file(INFRA / ".env.example"), used)
    config["_used"] = used
    return config


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def test_every_service_has_image_ports_environment_volumes_and_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(SERVICES) | {"minio-init"} <= set(services)
    for name, (port, probe) in SERVICES.items():
        s = services[name]
        assert s.get("image"), name
        hc = s["healthcheck"]
        assert probe in " ".join(hc["test"]) and hc["interval"] and hc["retries"] >= 3, name
        assert s.get("restart") == "unless-stopped", name
        if name != "mlflow":  # stateless: its state is in PostgreSQL and S3
            assert s.get("volumes"), name
        if port:
            assert f"127.0.0.1:{port}:{port}" in s["ports"], (name, s["ports"])  # loopback unless BIND_ADDRESS says
    images = {n: s["image"] for n, s in services.items()}
    assert images["postgres"].startswith("postgres:") and images["minio"].startswith("minio/minio:RELEASE.")
    assert images["mlflow"] == images["prefect-server"] == images["prefect-worker"] == "productgen:0.1.0"
    assert images["gpu-worker"] == "productgen-gpu:0.1.0"
    assert images["web"] == images["mlflow"]  # the page runs from the productgen image
    for n, s in services.items():  # pinned images, never :latest
        assert ":" in s["image"] and not s["image"].endswith(":latest"), n
    declared = set(compose["volumes"])
    for n, s in services.items():
        for v in s.get("volumes", []):
            source = v.split(":", 1)[0]
            if source.startswith("."):
                assert (INFRA / source).is_file(), (n, source)  # mounted scripts exist
            else:
                assert source in declared, (n, source)
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "minio-data:/data" in services["minio"]["volumes"]


def test_servers_are_wired_to_postgres_s3_and_auth(compose: dict[str, Any]) -> None:
    s = compose["services"]
    ml = _env(s["mlflow"])
    # each service its own PostgreSQL role, scoped to its databases (never the superuser POSTGRES_USER)
    assert ml["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://mlflow:change-me-mlflow-db@postgres:5432/mlflow"
    assert ml["MLFLOW_AUTH_DATABASE_URI"].endswith("@postgres:5432/mlflow_auth")
    assert ml["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow/artifacts"
    assert ml["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000" and ml["AWS_ACCESS_KEY_ID"] == "productgen"
    assert ml["MLFLOW_AUTH_ADMIN_PASSWORD"] and ml["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert "mlflow:5000" in ml["MLFLOW_ALLOWED_HOSTS"]  # other containers call it by its service name
    assert s["mlflow"]["command"] == ["sh", "/app/infra/mlflow/start.sh"]  # the script tests/team runs
    pf = _env(s["prefect-server"])
    assert pf["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://prefect:")
    assert pf["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    assert pf["PREFECT_SERVER_API_AUTH_STRING"] == "admin:change-me-prefect"
    assert s["prefect-server"]["command"] == ["sh", "/app/infra/prefect/start.sh"]  # refuses placeholders
    for worker, pool in (("prefect-worker", "productgen"), ("gpu-worker", "productgen-gpu")):
        w = _env(s[worker])
        assert s[worker]["command"] == ["sh", "/app/infra/worker.sh", pool]
        assert w["PREFECT_API_URL"] == "http://prefect-server:4200/api" and w["PREFECT_API_AUTH_STRING"]
        assert w["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and w["MLFLOW_TRACKING_PASSWORD"]
        assert w["MLFLOW_TRACKING_USERNAME"] == ml["MLFLOW_WORKER_USERNAME"] != ml["MLFLOW_AUTH_ADMIN_USERNAME"]
        assert w["MLFLOW_TRACKING_PASSWORD"] != ml["MLFLOW_AUTH_ADMIN_PASSWORD"]  # workers are not the admin
        assert w["PRODUCTGEN_PROMOTION_LOCK_URL"].startswith("postgresql+psycopg://optuna:")
        assert w["AWS_ENDPOINT_URL_S3"] == "http://minio:9000" and w["PRODUCTGEN_DIR"] == "/app"
        assert w["DO_NOT_TRACK"] == "true"
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    assert {d["work_pool"]["name"] for d in deployments} == {"productgen"}  # the CPU worker's pool
    pg = _env(s["postgres"])
    assert {pg["MLFLOW_DB"], pg["MLFLOW_AUTH_DB"], pg["PREFECT_DB"], pg["OPTUNA_DB"]} == {
        "mlflow",
        "mlflow_auth",
        "prefect",
        "optuna",
    }
    init = s["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy" and init["restart"] == "no"
    assert {_env(init)["MLFLOW_BUCKET"], _env(init)["DVC_BUCKET"]} == {"mlflow", "dvc"}


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    s = compose["services"]
    for name, svc in s.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in s, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in s[dep], (name, dep)
            else:
                assert cond["condition"] == "service_completed_successfully", (name, dep)
    assert set(s["mlflow"]["depends_on"]) == {"postgres", "minio-init"}
    assert set(s["prefect-server"]["depends_on"]) == {"postgres"}
    assert set(s["prefect-worker"]["depends_on"]) == {"prefect-server", "mlflow"}


def test_gpu_worker_image_has_a_cuda_base_and_torchrun(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "infra/Dockerfile.gpu"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    text = (INFRA / "Dockerfile.gpu").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+", text, re.M) and "FROM ${CUDA_IMAGE}" in text
    assert "torchrun" in text and "-c requirements.lock" in text and '".[team]"' in text
    cpu = (INFRA / "Dockerfile").read_text()
    assert "-c requirements.lock" in cpu and '".[team]"' in cpu and "USER productgen" in cpu
    for svc in ("mlflow", "prefect-server", "prefect-worker"):
        assert compose["services"][svc]["build"]["dockerfile"] == "infra/Dockerfile"


def test_env_file_documents_every_variable_and_no_secret_is_committed(compose: dict[str, Any]) -> None:
    documented = env_file(INFRA / ".env.example")
    assert compose["_used"] <= set(documented), sorted(compose["_used"] - set(documented))
    assert set(documented) - compose["_used"] <= {"PRODUCTGEN_GPU_IMAGE"} | compose["_used"]
    for key, value in documented.items():
        if re.search(r"PASSWORD|SECRET|AUTH_STRING", key):
            assert "change-me" in value, key  # placeholders only
    raw = (INFRA / "compose.yaml").read_text()
    for m in re.finditer(r"(PASSWORD|SECRET_KEY|AUTH_STRING|SECRET_ACCESS_KEY)\w*:\s*(\S+)", raw):
        assert m.group(2).startswith(("${", "postgresql")), m.group(0)  # every secret comes from the env file
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT)
    assert ignored.returncode == 0  # the filled-in env file cannot be committed
    tracked = subprocess.run(["git", "ls-files", "infra"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert "infra/.env" not in tracked


def test_scripts_the_services_run_exist_and_are_posix_shell() -> None:
    for script in ("mlflow/start.sh", "prefect/start.sh", "worker.sh", "minio/init.sh", "postgres/init-databases.sh"):
        path = INFRA / script
        assert path.read_text().startswith("#!/bin/sh"), script
        check = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, (script, check.stderr)


def test_web_page_service_serves_the_team_registry_with_its_users(compose: dict[str, Any]) -> None:
    """The `web` service: the team registry's champions, sign-in with the MLflow server's own users (promote and
    rollback run as the signed-in user), the promotion lock of every other client, and a CLI that takes it all."""
    s = compose["services"]
    web, ml = s["web"], _env(s["mlflow"])
    cmd = web["command"]
    assert cmd[:2] == ["productgen", "web"] and cmd[cmd.index("--auth") + 1] == "mlflow"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "8000"
    assert cmd[cmd.index("--cache-dir") + 1].startswith("/home/productgen/.cache")  # on the web-cache volume
    assert "web-cache:/home/productgen/.cache" in web["volumes"]
    env = _env(web)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["MLFLOW_TRACKING_USERNAME"] != ml["MLFLOW_AUTH_ADMIN_USERNAME"]  # it reads; users sign in to change
    assert env["PRODUCTGEN_PROMOTION_LOCK_URL"] == _env(s["prefect-worker"])["PRODUCTGEN_PROMOTION_LOCK_URL"]
    assert not {k for k in env if k.startswith(("AWS_", "PREFECT_API"))}  # no S3 keys, no Prefect credential
    assert web["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "8000/health" in " ".join(web["healthcheck"]["test"])
    assert web["build"]["dockerfile"] == "infra/Dockerfile"
    helptext = subprocess.run(
        [str(Path(sys.executable).parent / "productgen"), "web", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        timeout=60,
    ).stdout
    for option in ("--host", "--port", "--auth", "--cache-dir", "--log-level"):
        assert option in helptext, option
