#!/bin/sh
# First start of the postgres container only (docker-entrypoint-initdb.d): one database per service, each owned
# by its own login role that can connect to that database only. POSTGRES_USER (the superuser) stays inside this
# container for administration; no service or worker is given it. Names come from the env file; the defaults
# match infra/.env.example.
#   MLFLOW_DB_USER   owns MLFLOW_DB and MLFLOW_AUTH_DB (the tracking server)
#   PREFECT_DB_USER  owns PREFECT_DB (the Prefect server)
#   OPTUNA_DB_USER   owns OPTUNA_DB (Optuna studies and the promotion lock: the workers)
set -eu

refuse_placeholder() {  # NAME VALUE: the example env file's "change-me" values are public
    case "$2" in
        *change-me*) echo "$1 still holds the example placeholder from infra/.env.example; set a real secret in infra/.env" >&2; exit 2 ;;
    esac
    [ "${#2}" -ge 12 ] || { echo "$1: use 12 characters or more" >&2; exit 2; }
}
refuse_placeholder POSTGRES_PASSWORD "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
refuse_placeholder MLFLOW_DB_PASSWORD "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD}"
refuse_placeholder PREFECT_DB_PASSWORD "${PREFECT_DB_PASSWORD:?set PREFECT_DB_PASSWORD}"
refuse_placeholder OPTUNA_DB_PASSWORD "${OPTUNA_DB_PASSWORD:?set OPTUNA_DB_PASSWORD}"

psql_admin() {
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres "$@"
}

# role password databases...
scoped() {
    role="$1"; password="$2"; shift 2
    echo "creating role $role"
    # psql variables quote the identifier (:"v") and the literal (:'v'): passwords never reach the shell's parser
    psql_admin -v role="$role" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
SQL
    for db in "$@"; do
        echo "creating database $db (owner $role)"
        psql_admin -v db="$db" -v role="$role" <<'SQL'
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"role";
SQL
    done
}

scoped "${MLFLOW_DB_USER:-mlflow}" "$MLFLOW_DB_PASSWORD" "${MLFLOW_DB:-mlflow}" "${MLFLOW_AUTH_DB:-mlflow_auth}"
scoped "${PREFECT_DB_USER:-prefect}" "$PREFECT_DB_PASSWORD" "${PREFECT_DB:-prefect}"
scoped "${OPTUNA_DB_USER:-optuna}" "$OPTUNA_DB_PASSWORD" "${OPTUNA_DB:-optuna}"
# the maintenance database too: the service roles reach their own databases and nothing else
psql_admin -c 'REVOKE CONNECT ON DATABASE postgres FROM PUBLIC'
