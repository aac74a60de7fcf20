#!/bin/sh
# Start the MLflow tracking server of the team deployment: PostgreSQL backend store, artifacts proxied to S3
# (MinIO in compose), MLflow's basic-auth app. The compose service `mlflow` runs this script, and so does the
# loopback integration suite (tests/team), so what is tested is what is deployed.
#
# Required:  MLFLOW_BACKEND_STORE_URI       postgresql+psycopg://USER:PASSWORD@HOST:5432/mlflow
#            MLFLOW_AUTH_DATABASE_URI       postgresql+psycopg://USER:PASSWORD@HOST:5432/mlflow_auth (users, grants)
#            MLFLOW_ARTIFACTS_DESTINATION   s3://BUCKET/artifacts
#            MLFLOW_AUTH_ADMIN_PASSWORD     the admin's password on first start (12+ characters)
#            MLFLOW_FLASK_SERVER_SECRET_KEY CSRF key (the same on every replica)
#            AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, MLFLOW_S3_ENDPOINT_URL (for a non-AWS S3 such as MinIO)
#            MLFLOW_WORKER_USERNAME / MLFLOW_WORKER_PASSWORD  the non-admin user workers and laptops log with;
#                                           created in the auth database if missing (the admin stays for admins)
# Optional:  MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_DEFAULT_PERMISSION (READ), MLFLOW_HOST (0.0.0.0),
#            MLFLOW_PORT (5000), MLFLOW_WORKERS (2), MLFLOW_ALLOWED_HOSTS (Host headers besides localhost and
#            private IPs, e.g. mlflow,mlflow:5000,mlflow.example.com), MLFLOW_AUTH_CONFIG_PATH (where the
#            generated basic-auth .ini goes; /tmp by default)
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql+psycopg://...)}"
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (postgresql+psycopg://.../mlflow_auth)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/artifacts)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD (first start creates the admin user with it)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF protection of the auth app)}"
: "${MLFLOW_WORKER_USERNAME:?set MLFLOW_WORKER_USERNAME (the non-admin user of workers)}"
: "${MLFLOW_WORKER_PASSWORD:?set MLFLOW_WORKER_PASSWORD}"
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"

# Refuse the example env file's placeholders and short secrets: a server started with "change-me-..." is open
# to anyone who has read infra/.env.example.
refuse_placeholder() {  # NAME VALUE
    case "$2" in
        *change-me*) echo "$1 still holds the example placeholder from infra/.env.example; set a real secret (openssl rand -hex 16) in infra/.env" >&2; exit 2 ;;
    esac
}
for pair in "MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_AUTH_ADMIN_PASSWORD" "MLFLOW_WORKER_PASSWORD=$MLFLOW_WORKER_PASSWORD" \
            "MLFLOW_FLASK_SERVER_SECRET_KEY=$MLFLOW_FLASK_SERVER_SECRET_KEY" \
            "MLFLOW_BACKEND_STORE_URI=$MLFLOW_BACKEND_STORE_URI" "MLFLOW_AUTH_DATABASE_URI=$MLFLOW_AUTH_DATABASE_URI" \
            "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-}"; do
    refuse_placeholder "${pair%%=*}" "${pair#*=}"
done
refuse_short() {  # NAME VALUE
    [ "${#2}" -ge 12 ] || { echo "$1: use 12 characters or more" >&2; exit 2; }
}
refuse_short MLFLOW_AUTH_ADMIN_PASSWORD "$MLFLOW_AUTH_ADMIN_PASSWORD"
refuse_short MLFLOW_WORKER_PASSWORD "$MLFLOW_WORKER_PASSWORD"
if [ "$MLFLOW_WORKER_USERNAME" = "$MLFLOW_AUTH_ADMIN_USERNAME" ]; then
    echo "MLFLOW_WORKER_USERNAME must not be the admin ($MLFLOW_AUTH_ADMIN_USERNAME): workers get their own user" >&2
    exit 2
fi

# The auth app reads its database URI from an .ini file: write one (private, never committed) from the
# environment. configparser treats % as interpolation, so a URL-encoded password's % is doubled.
conf="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-basic-auth.ini}"
umask 077
{
    echo "[mlflow]"
    echo "default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}"
    echo "database_uri = $(printf '%s' "$MLFLOW_AUTH_DATABASE_URI" | sed 's/%/%%/g')"
    echo "authorization_function = mlflow.server.auth:authenticate_request_basic_auth"
    # Without a cache every request re-hashes the password (PBKDF2): seconds per call on a busy small machine.
    echo "auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}"
} > "$conf"
export MLFLOW_AUTH_CONFIG_PATH="$conf"
# Background job execution is not used by productgen; off, it leaves no orphan consumers on shutdown.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# The workers' own user (not an admin: READ on what others made, MANAGE on the experiments and models it
# creates), created before the server starts; an existing user keeps its password (change it with the API).
python - <<'PY'
import os

from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

store = SqlAlchemyStore()
store.init_db(os.environ["MLFLOW_AUTH_DATABASE_URI"])
name = os.environ["MLFLOW_WORKER_USERNAME"]
if not store.has_user(name):
    store.create_user(name, os.environ["MLFLOW_WORKER_PASSWORD"], is_admin=False)
    print(f"created MLflow user {name} (not an admin)")
PY

set -- mlflow server --app-name basic-auth \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}"
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
    set -- "$@" --allowed-hosts "localhost,localhost:*,127.0.0.1,127.0.0.1:*,${MLFLOW_ALLOWED_HOSTS}"
fi
exec "$@"
