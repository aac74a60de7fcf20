#!/bin/sh
# Prefect worker of the team deployment (compose services prefect-worker and gpu-worker; Kubernetes users run
# a Kubernetes work pool instead, see infra/README.md). Waits for the server, creates the process work pool
# named $1 if it does not exist yet, then polls it; flow runs execute in /app (prefect.yaml's pull step).
set -eu
pool="${1:?usage: worker.sh POOL}"
# Workers log to MLflow as their own (non-admin) user and never start with the example env file's placeholders.
for pair in "PREFECT_API_AUTH_STRING=${PREFECT_API_AUTH_STRING:-}" "MLFLOW_TRACKING_PASSWORD=${MLFLOW_TRACKING_PASSWORD:-}" \
            "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-}" "PRODUCTGEN_PROMOTION_LOCK_URL=${PRODUCTGEN_PROMOTION_LOCK_URL:-}"; do
    case "${pair#*=}" in
        *change-me*) echo "${pair%%=*} still holds the example placeholder from infra/.env.example; set a real secret in infra/.env" >&2; exit 2 ;;
    esac
done
if [ "${MLFLOW_TRACKING_USERNAME:-}" = "${MLFLOW_ADMIN_USER:-admin}" ]; then
    echo "MLFLOW_TRACKING_USERNAME is the MLflow admin; workers use their own user (MLFLOW_WORKER_USER in infra/.env)" >&2
    exit 2
fi
i=0
until python -c "import os, urllib.request as u; u.urlopen(os.environ['PREFECT_API_URL'] + '/health', timeout=5)" 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -le 60 ] || { echo "Prefect server at $PREFECT_API_URL not reachable" >&2; exit 1; }
    sleep 5
done
prefect work-pool inspect "$pool" >/dev/null 2>&1 || prefect work-pool create "$pool" --type process
exec prefect worker start --pool "$pool" --type process --with-healthcheck
