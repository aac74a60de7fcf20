#!/bin/sh
# First start of the postgres container only (docker-entrypoint-initdb.d): one database per service, all owned by
# POSTGRES_USER. Names come from the env file; the defaults match infra/.env.example.
set -eu
for db in "${MLFLOW_DB:-mlflow}" "${MLFLOW_AUTH_DB:-mlflow_auth}" "${PREFECT_DB:-prefect}" "${OPTUNA_DB:-optuna}"; do
    echo "creating database $db"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
