#!/bin/sh
# Start the Prefect server of the team deployment (compose service prefect-server): PostgreSQL database, API and
# UI behind PREFECT_SERVER_API_AUTH_STRING ("user:password"). Refuses the example env file's placeholders.
# Required:  PREFECT_API_DATABASE_CONNECTION_URL  postgresql+asyncpg://PREFECT_DB_USER:PASSWORD@HOST:5432/prefect
#            PREFECT_SERVER_API_AUTH_STRING       user:password (12+ characters of password)
set -eu
: "${PREFECT_API_DATABASE_CONNECTION_URL:?set PREFECT_API_DATABASE_CONNECTION_URL}"
: "${PREFECT_SERVER_API_AUTH_STRING:?set PREFECT_SERVER_API_AUTH_STRING (user:password)}"
for pair in "PREFECT_SERVER_API_AUTH_STRING=$PREFECT_SERVER_API_AUTH_STRING" \
            "PREFECT_API_DATABASE_CONNECTION_URL=$PREFECT_API_DATABASE_CONNECTION_URL"; do
    case "${pair#*=}" in
        *change-me*) echo "${pair%%=*} still holds the example placeholder from infra/.env.example; set a real secret in infra/.env" >&2; exit 2 ;;
    esac
done
password="${PREFECT_SERVER_API_AUTH_STRING#*:}"
[ "${#password}" -ge 12 ] || { echo "PREFECT_SERVER_API_AUTH_STRING: use user:password with 12 or more characters of password" >&2; exit 2; }
exec prefect server start --host "${PREFECT_HOST:-0.0.0.0}" --port "${PREFECT_PORT:-4200}"
