#!/usr/bin/env bash
# The team stack without Docker: docker-compose.yml's configuration as local processes.
#   up           PostgreSQL (databases `prefect` and `mlflow`), an S3 server (moto, unless
#                SLADE_S3_ENDPOINT_URL names one), the Prefect server on PostgreSQL, the MLflow
#                server on PostgreSQL with its artifacts in S3 (clients reach them over HTTP
#                only), the work pools and the S3 result-storage block, one worker on cpu-pool.
#   worker POOL  another worker (e.g. on the GPU machine: `worker gpu-pool`); it needs only
#                PREFECT_API_URL, MLFLOW_TRACKING_URI and S3 (SLADE_S3_ENDPOINT_URL + AWS_* keys).
#   setup        the work pools and the result-storage block (docker-compose's workers run it).
#   down         stop what this SLADE_HOME started (PostgreSQL with pg_ctl); status: what runs.
# Variables: scripts/team-env.sh. PIDs in $SLADE_HOME/pids, logs in $SLADE_HOME/logs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/team-env.sh"
source "$HERE/services.sh"
SECRETS="$SLADE_HOME/team"

pg_bin() {  # directory of initdb / pg_ctl: PATH, else Debian's /usr/lib/postgresql/<ver>/bin
    local initdb
    if initdb=$(command -v initdb); then dirname "$(readlink -f "$initdb")"; return; fi
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$initdb" ]] || {
        echo "PostgreSQL server binaries not found: apt-get install -y postgresql" \
            "(or set SLADE_DATABASE_URL to an existing server)" >&2
        return 1
    }
    dirname "$initdb"
}

as_pg() {  # PostgreSQL refuses to run as root: as root, run it as the `postgres` user
    if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_password() {  # generated once per SLADE_HOME, readable by us only
    mkdir -p "$SECRETS"
    [[ -s "$SECRETS/pg-password" ]] ||
        (umask 077 && python -c 'import secrets; print(secrets.token_hex(16))' >"$SECRETS/pg-password")
    cat "$SECRETS/pg-password"
}

database_address() {  # user:pw@host:port of the PostgreSQL server
    if [[ -n "${SLADE_DATABASE_URL:-}" ]]; then
        local url=${SLADE_DATABASE_URL#*://}
        echo "${url%/}"
    else echo "slade:$(pg_password)@127.0.0.1:$SLADE_PG_PORT"; fi
}

postgres_up() {
    [[ -z "${SLADE_DATABASE_URL:-}" ]] || { echo "postgres: using SLADE_DATABASE_URL"; return; }
    if alive postgres; then echo "postgres: reusing pid $(cat "$PIDS/postgres.pid")"; return; fi
    local bin data=$SLADE_PG_DATA pw
    bin=$(pg_bin)
    pw=$(pg_password)
    mkdir -p "$data"
    if ((EUID == 0)); then chown postgres: "$data"; fi
    chmod 700 "$data"
    as_pg test -w "$data" || {
        echo "the postgres user cannot write $data: set SLADE_PG_DATA to a directory it" \
            "can reach (e.g. under /tmp or /var/lib)" >&2
        return 1
    }
    if [[ ! -f "$data/PG_VERSION" ]]; then
        echo "postgres: initdb $data"
        local pwfile
        pwfile=$(mktemp)
        echo "$pw" >"$pwfile"
        if ((EUID == 0)); then chown postgres: "$pwfile"; fi
        as_pg "$bin/initdb" -D "$data" -U slade --pwfile="$pwfile" --auth=scram-sha-256 \
            -E UTF8 >"$LOGS/postgres-initdb.log" 2>&1 || {
            rm -f "$pwfile"
            tail -n 20 "$LOGS/postgres-initdb.log" >&2
            return 1
        }
        rm -f "$pwfile"
    fi
    echo "starting postgres on 127.0.0.1:$SLADE_PG_PORT (log: $data/server.log)"
    as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 120 \
        -o "-p $SLADE_PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" \
        start >/dev/null || { tail -n 20 "$data/server.log" >&2; return 1; }
    head -n 1 "$data/postmaster.pid" >"$PIDS/postgres.pid"
    local db
    for db in prefect mlflow; do
        PGPASSWORD=$pw "$bin/psql" -h 127.0.0.1 -p "$SLADE_PG_PORT" -U slade -d postgres \
            -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
            PGPASSWORD=$pw "$bin/createdb" -h 127.0.0.1 -p "$SLADE_PG_PORT" -U slade "$db"
    done
    echo "postgres: up (databases prefect, mlflow)"
}

postgres_down() {
    alive postgres || { rm -f "$PIDS/postgres.pid"; return 0; }
    echo "stopping postgres (pid $(cat "$PIDS/postgres.pid"))"
    as_pg "$(pg_bin)/pg_ctl" -D "$SLADE_PG_DATA" -m fast -w -t 60 stop >/dev/null ||
        kill -TERM "$(cat "$PIDS/postgres.pid")"
    rm -f "$PIDS/postgres.pid"
}

s3_up() {
    if [[ -n "${SLADE_S3_LOCAL:-}" ]]; then
        team_server s3 "$SLADE_S3_ENDPOINT_URL/moto-api/" \
            moto_server -H 127.0.0.1 -p "$SLADE_S3_PORT"
    fi
    python - <<'EOF'
import os

import boto3
from botocore.exceptions import ClientError

s3 = boto3.client("s3")
for bucket in (os.environ["SLADE_MLFLOW_BUCKET"], os.environ["SLADE_RESULTS_BUCKET"]):
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
        print(f"s3: created bucket {bucket}")
EOF
}

setup() {  # work pools + the S3 block of PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK (idempotent)
    local pool
    for pool in cpu-pool gpu-pool; do
        prefect work-pool inspect "$pool" >/dev/null 2>&1 ||
            prefect work-pool create "$pool" --type process >/dev/null
    done
    python - <<'EOF'
import os

from prefect_aws.s3 import S3Bucket

# Only the bucket: every machine's boto3 takes keys and endpoint from its own environment.
S3Bucket(bucket_name=os.environ["SLADE_RESULTS_BUCKET"]).save(
    os.environ["SLADE_RESULTS_BLOCK"], overwrite=True
)
print(f"prefect results: s3-bucket/{os.environ['SLADE_RESULTS_BLOCK']} -> "
      f"s3://{os.environ['SLADE_RESULTS_BUCKET']}")
EOF
}

worker() {  # worker POOL
    local pool=${1:?usage: $0 worker POOL} name
    name=$([[ "$pool" == cpu-pool ]] && echo worker || echo "worker-$pool")
    if alive "$name"; then echo "$name: reusing pid $(cat "$PIDS/$name.pid")"; return; fi
    start "$name" prefect worker start --pool "$pool" --type process \
        --name "slade-$pool-$(hostname)-$$"
}

team_server() {  # team_server NAME URL CMD...: like `server`, never reusing a foreign one
    if healthy "$2" && ! alive "$1"; then
        echo "$1: something else answers at $2 (make stop?); choose another port" >&2
        return 1
    fi
    server "$@"
}

up() {
    local db mlflow_url="http://127.0.0.1:$SLADE_MLFLOW_PORT"
    postgres_up
    s3_up
    db=$(database_address)
    # the database URLs only in the servers' environment (not on a command line `ps` shows)
    PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$db/prefect" \
        team_server prefect-server "$PREFECT_API_URL/health" \
        prefect server start --host 127.0.0.1 --port "$SLADE_PREFECT_PORT" &
    MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$db/mlflow" MLFLOW_S3_ENDPOINT_URL="$SLADE_S3_ENDPOINT_URL" \
        team_server mlflow-server "$mlflow_url/health" \
        mlflow server --host 127.0.0.1 --port "$SLADE_MLFLOW_PORT" --workers 1 \
        --artifacts-destination "s3://$SLADE_MLFLOW_BUCKET/" \
        --allowed-hosts "127.0.0.1:$SLADE_MLFLOW_PORT,localhost:$SLADE_MLFLOW_PORT" &
    wait -n; wait -n # both servers start in parallel; fail if either fails (not `&&`: set -e)
    setup
    worker cpu-pool
    echo "Prefect UI: $PREFECT_UI_URL"
    echo "MLflow UI:  $mlflow_url"
    echo "results:    $PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK (s3://$SLADE_RESULTS_BUCKET)"
}

down() {
    local file
    for file in "$PIDS"/worker*.pid; do [[ -e "$file" ]] && stop "$(basename "$file" .pid)"; done
    for name in prefect-server mlflow-server s3; do stop "$name"; done
    postgres_down
}

status() {
    local name
    for name in postgres s3 prefect-server mlflow-server worker; do
        if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"
        else echo "$name: not started by us"; fi
    done
}

case "${1:-}" in
up | down | status | setup) "$1" ;;
worker) worker "${2:-}" ;;
*) echo "usage: $0 up|worker POOL|setup|down|status" >&2; exit 2 ;;
esac
