#!/bin/sh
# MLflow for docker-compose.yml, with basic-auth as in scripts/team-stack.sh: the server
# (the command, `mlflow server ... --app-name basic-auth`), then (on every start, idempotent)
# the users `pipeline` and `viewer` with their passwords from .env (scripts/team_access.py).
# Users and permissions live in the MLflow database; the admin is created by the server on its
# first start from MLFLOW_AUTH_ADMIN_PASSWORD. The healthcheck waits for /tmp/slade-mlflow-ready.
set -eu
rm -f /tmp/slade-mlflow-ready
# the auth config names the database (with its password): written here, readable by us only
umask 077
cat >/tmp/basic_auth.ini <<INI
[mlflow]
default_permission = READ
database_uri = $MLFLOW_BACKEND_STORE_URI
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH=/tmp/basic_auth.ini
"$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT
until python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=5)" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || exit 1
    sleep 2
done
MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python scripts/team_access.py users
touch /tmp/slade-mlflow-ready
wait "$pid"
