#!/usr/bin/env bash
# The team stack without Docker: docker-compose.yml's configuration as local processes.
#   up           PostgreSQL (databases `prefect` and `mlflow`), an S3 server (moto, unless
#                SLADE_S3_ENDPOINT_URL names one), the Prefect server on PostgreSQL, the MLflow
#                server on PostgreSQL with its artifacts in S3 (clients reach them over HTTP
#                only), the work pools and the S3 result-storage block, one worker on cpu-pool.
#                Everything listens on SLADE_BIND_HOST (default 127.0.0.1). With
#                SLADE_TLS_CERT and SLADE_TLS_KEY set, also the TLS proxy (`proxy`).
#   worker POOL  another worker (e.g. on the GPU machine: `worker gpu-pool`), started only
#                once the servers accept its credentials (else the reason, in its log).
#   worker-env [DIR]  what a worker on another machine exports (sourced there), reading the
#                secrets from its copies in DIR (default: this machine's SLADE_SECRETS_DIR).
#   proxy        nginx with deploy/nginx/slade-team.conf: TLS in front of Prefect and MLflow.
#   self-signed-cert  a self-signed certificate for SLADE_PROXY_HOST (to try TLS out).
#   setup        the work pools and the result-storage block (docker-compose's workers run it).
#   down         stop what this SLADE_HOME started (PostgreSQL with pg_ctl); status: what runs.
# Authentication is on by default (SLADE_TEAM_AUTH=on): a Prefect auth string and the MLflow
# users admin, pipeline and viewer, each with a password generated once into
# SLADE_SECRETS_DIR (mode 600, never on a command line or in a log). A listen address other
# than loopback is refused without it. docs/team-stack.md: remote workers, TLS, roles.
# Variables: scripts/team-env.sh. PIDs in $SLADE_HOME/pids, logs in $SLADE_HOME/logs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/team-env.sh"
source "$HERE/services.sh"
SECRETS="$SLADE_SECRETS_DIR"
# where this machine's servers reach each other (the listen address, or loopback for 0.0.0.0)
case "$SLADE_BIND_HOST" in 0.0.0.0 | "::") LOCAL_HOST=127.0.0.1 ;; *) LOCAL_HOST=$SLADE_BIND_HOST ;; esac
# the TLS proxy (nginx): where it listens, the name its certificate carries, its ports
export SLADE_PROXY_BIND_HOST="${SLADE_PROXY_BIND_HOST:-$SLADE_BIND_HOST}"
export SLADE_PROXY_HOST="${SLADE_PROXY_HOST:-$SLADE_SERVER_HOST}"
export SLADE_PREFECT_TLS_PORT="${SLADE_PREFECT_TLS_PORT:-4443}"
export SLADE_MLFLOW_TLS_PORT="${SLADE_MLFLOW_TLS_PORT:-5443}"

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

secret() {  # secret NAME [PREFIX]: path of a random secret generated once, readable by us only
    (umask 077 && mkdir -p "$SECRETS")
    [[ -s "$SECRETS/$1" ]] ||
        (umask 077 && python -c 'import secrets, sys; print(sys.argv[1] + secrets.token_hex(16))' \
            "${2:-}" >"$SECRETS/$1")
    echo "$SECRETS/$1"
}

pg_password() { cat "$(secret pg-password)"; }

is_loopback() { [[ "$1" == 127.* || "$1" == ::1 || "$1" == localhost ]]; }

check_exposure() {  # refuse to open the stack beyond this machine without authentication
    case "$SLADE_TEAM_AUTH" in on | off) ;; *)
        echo "SLADE_TEAM_AUTH must be on or off, not '$SLADE_TEAM_AUTH'" >&2; return 1 ;;
    esac
    local host
    for host in "$SLADE_BIND_HOST" "$SLADE_PROXY_BIND_HOST"; do
        is_loopback "$host" && continue
        if [[ "$SLADE_TEAM_AUTH" != on ]]; then
            echo "refusing to listen on $host with SLADE_TEAM_AUTH=off: without authentication" \
                "anyone who reaches $host can start, cancel or delete flow runs, read every" \
                "artifact and move the champion alias. Keep SLADE_TEAM_AUTH=on (the default)" \
                "or listen on loopback only (SLADE_BIND_HOST=127.0.0.1)." >&2
            return 1
        fi
        if [[ -n "${SLADE_S3_LOCAL:-}" && "${SLADE_S3_OPEN:-}" != 1 ]]; then
            echo "refusing to run the local moto S3 on $host: moto accepts any keys, so anyone" \
                "who reaches $host could read and overwrite the artifacts and results. Set" \
                "SLADE_S3_ENDPOINT_URL (and the AWS_* keys) to an S3 that checks keys (MinIO," \
                "AWS), or SLADE_S3_OPEN=1 to accept that for a trial." >&2
            return 1
        fi
    done
}

database_address() {  # user:pw@host:port of the PostgreSQL server
    if [[ -n "${SLADE_DATABASE_URL:-}" ]]; then
        local url=${SLADE_DATABASE_URL#*://}
        echo "${url%/}"
    else echo "slade:$(pg_password)@$LOCAL_HOST:$SLADE_PG_PORT"; fi
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
    # initdb's pg_hba.conf admits 127.0.0.1 and ::1: also the listen address, by password
    local hba="host all all samenet scram-sha-256"
    grep -qxF "$hba" "$data/pg_hba.conf" || echo "$hba" >>"$data/pg_hba.conf"
    echo "starting postgres on $SLADE_BIND_HOST:$SLADE_PG_PORT (log: $data/server.log)"
    as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 120 \
        -o "-p $SLADE_PG_PORT -c listen_addresses=$SLADE_BIND_HOST -c unix_socket_directories=''" \
        start >/dev/null || { tail -n 20 "$data/server.log" >&2; return 1; }
    head -n 1 "$data/postmaster.pid" >"$PIDS/postgres.pid"
    local db
    for db in prefect mlflow; do
        PGPASSWORD=$pw "$bin/psql" -h "$LOCAL_HOST" -p "$SLADE_PG_PORT" -U slade -d postgres \
            -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
            PGPASSWORD=$pw "$bin/createdb" -h "$LOCAL_HOST" -p "$SLADE_PG_PORT" -U slade "$db"
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
            moto_server -H "$SLADE_BIND_HOST" -p "$SLADE_S3_PORT"
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

access_check() {  # access_check LOG: this machine's credentials against the servers
    python "$HERE/team_access.py" check >"$1" 2>&1 || {
        echo "the servers refused this machine (log: $1):" >&2
        tail -n 5 "$1" >&2
        return 1
    }
}

worker() {  # worker POOL
    local pool=${1:?usage: $0 worker POOL} name
    name=$([[ "$pool" == cpu-pool ]] && echo worker || echo "worker-$pool")
    if alive "$name"; then echo "$name: reusing pid $(cat "$PIDS/$name.pid")"; return; fi
    # a wrong password or an untrusted certificate: said in the worker's log, and it stays down
    access_check "$LOGS/$name.log"
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

allowed_hosts() {  # the Host headers MLflow answers: its own addresses and the proxy's
    local port=$SLADE_MLFLOW_PORT
    echo "$SLADE_SERVER_HOST:$port,$LOCAL_HOST:$port,127.0.0.1:$port,localhost:$port,$SLADE_PROXY_HOST:$SLADE_MLFLOW_TLS_PORT${SLADE_MLFLOW_ALLOWED_HOSTS:+,$SLADE_MLFLOW_ALLOWED_HOSTS}"
}

prefect_server() {
    export PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$1/prefect"
    if [[ "$SLADE_TEAM_AUTH" == on ]]; then
        PREFECT_SERVER_API_AUTH_STRING=$(<"$(secret prefect-auth slade:)")
        export PREFECT_SERVER_API_AUTH_STRING
    fi
    # the UI in a browser calls the API where the browser reached it: through the proxy
    ! tls_on || export PREFECT_UI_API_URL="https://$SLADE_PROXY_HOST:$SLADE_PREFECT_TLS_PORT/api"
    team_server prefect-server "http://$LOCAL_HOST:$SLADE_PREFECT_PORT/api/health" \
        prefect server start --host "$SLADE_BIND_HOST" --port "$SLADE_PREFECT_PORT"
}

mlflow_server() {
    local app=()
    export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$1/mlflow"
    export MLFLOW_S3_ENDPOINT_URL="$SLADE_S3_ENDPOINT_URL"
    if [[ "$SLADE_TEAM_AUTH" == on ]]; then
        # users and permissions in the same database (their own tables and migration history);
        # the admin's password is read when the admin user is first created
        (umask 077 && cat >"$SECRETS/mlflow-auth.ini" <<EOF
[mlflow]
default_permission = READ
database_uri = $MLFLOW_BACKEND_STORE_URI
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
        )
        export MLFLOW_AUTH_CONFIG_PATH="$SECRETS/mlflow-auth.ini"
        MLFLOW_AUTH_ADMIN_PASSWORD=$(<"$(secret mlflow-admin)")
        MLFLOW_FLASK_SERVER_SECRET_KEY=$(<"$(secret mlflow-flask-key)")
        export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
        app=(--app-name basic-auth)
    fi
    team_server mlflow-server "http://$LOCAL_HOST:$SLADE_MLFLOW_PORT/health" \
        mlflow server --host "$SLADE_BIND_HOST" --port "$SLADE_MLFLOW_PORT" --workers 1 \
        "${app[@]}" --artifacts-destination "s3://$SLADE_MLFLOW_BUCKET/" \
        --allowed-hosts "$(allowed_hosts)"
}

mlflow_users() {  # as MLflow's admin: the pipeline and viewer users (passwords from files)
    (
        MLFLOW_TRACKING_URI="http://$LOCAL_HOST:$SLADE_MLFLOW_PORT"
        MLFLOW_AUTH_ADMIN_PASSWORD=$(<"$(secret mlflow-admin)")
        SLADE_MLFLOW_PIPELINE_PASSWORD=$(<"$(secret mlflow-pipeline)")
        SLADE_MLFLOW_VIEWER_PASSWORD=$(<"$(secret mlflow-viewer)")
        export MLFLOW_TRACKING_URI MLFLOW_AUTH_ADMIN_PASSWORD SLADE_MLFLOW_PIPELINE_PASSWORD \
            SLADE_MLFLOW_VIEWER_PASSWORD
        python "$HERE/team_access.py" users
    )
}

s3_credentials() {  # the S3 keys as a shared-credentials file, for worker-env to point at
    [[ -n "${AWS_ACCESS_KEY_ID:-}" ]] || return 0
    (umask 077 && printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
        "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$SECRETS/s3-credentials")
}

up() {
    local db
    check_exposure
    postgres_up
    s3_up
    db=$(database_address)
    if [[ "$SLADE_TEAM_AUTH" == on ]]; then
        secret prefect-auth slade: >/dev/null # PREFECT_API_AUTH_STRING is user:password
        secret mlflow-admin >/dev/null
        secret mlflow-pipeline >/dev/null
        secret mlflow-viewer >/dev/null
        s3_credentials
        team_credentials
    fi
    # secrets and database URLs only in the servers' environment (not on a command line)
    (prefect_server "$db") &
    (mlflow_server "$db") &
    wait -n; wait -n # both servers start in parallel; fail if either fails (not `&&`: set -e)
    [[ "$SLADE_TEAM_AUTH" != on ]] || mlflow_users
    setup
    worker cpu-pool
    [[ -z "${SLADE_TLS_CERT:-}" ]] || proxy
    echo "Prefect UI: $PREFECT_UI_URL"
    echo "MLflow UI:  $MLFLOW_TRACKING_URI"
    echo "results:    $PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK (s3://$SLADE_RESULTS_BUCKET)"
    [[ "$SLADE_TEAM_AUTH" != on ]] ||
        echo "logins:     $SECRETS (prefect-auth; MLflow users admin, pipeline, viewer)"
}

tls_on() { [[ -n "${SLADE_TLS_CERT:-}" ]]; }

ca_file() {  # what clients trust: SLADE_TLS_CA (the CA that signed the certificate), else it
    (umask 077 && mkdir -p "$SECRETS")
    cp "${SLADE_TLS_CA:-$SLADE_TLS_CERT}" "$SECRETS/ca.pem"
    echo "$SECRETS/ca.pem"
}

worker_env() {  # worker-env [DIR]: exports for a worker elsewhere, secrets read from DIR
    local dir=${1:-$SECRETS} prefect_url=$PREFECT_API_URL mlflow_url=$MLFLOW_TRACKING_URI
    local files=() line
    if tls_on; then
        prefect_url="https://$SLADE_PROXY_HOST:$SLADE_PREFECT_TLS_PORT/api"
        mlflow_url="https://$SLADE_PROXY_HOST:$SLADE_MLFLOW_TLS_PORT"
    fi
    [[ "$SLADE_TEAM_AUTH" != on ]] || files+=(prefect-auth mlflow-pipeline)
    [[ ! -s "$SECRETS/s3-credentials" ]] || files+=(s3-credentials)
    ! tls_on || files+=(ca.pem)
    echo "# A worker on another machine: copy ${files[*]:-nothing} from $SECRETS on $(hostname)"
    [[ ${#files[@]} -eq 0 ]] || echo "# into $dir (keep them mode 600: scp -p),"
    echo "# then source this output and run: scripts/team-stack.sh worker POOL"
    ! tls_on || ca_file >/dev/null
    printf 'export %s=%q\n' PREFECT_API_URL "$prefect_url" MLFLOW_TRACKING_URI "$mlflow_url"
    if [[ "$SLADE_TEAM_AUTH" == on ]]; then
        printf 'export PREFECT_API_AUTH_STRING="$(cat %q)"\n' "$dir/prefect-auth"
        echo "export MLFLOW_TRACKING_USERNAME=pipeline"
        printf 'export MLFLOW_TRACKING_PASSWORD="$(cat %q)"\n' "$dir/mlflow-pipeline"
    fi
    if tls_on; then
        printf 'export %s=%q\n' SSL_CERT_FILE "$dir/ca.pem" REQUESTS_CA_BUNDLE "$dir/ca.pem"
    fi
    for line in SLADE_S3_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_DEFAULT_REGION SLADE_MLFLOW_BUCKET \
        SLADE_RESULTS_BUCKET SLADE_RESULTS_BLOCK PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK \
        PREFECT_RESULTS_PERSIST_BY_DEFAULT; do
        printf 'export %s=%q\n' "$line" "${!line}"
    done
    if [[ -s "$SECRETS/s3-credentials" ]]; then
        printf 'export AWS_SHARED_CREDENTIALS_FILE=%q\n' "$dir/s3-credentials"
        echo "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY"
    fi
}

self_signed_cert() {  # a certificate for SLADE_PROXY_HOST, signed by itself (to try TLS out)
    local dir="$SECRETS/tls" san
    if [[ "$SLADE_PROXY_HOST" =~ ^[0-9.]+$ || "$SLADE_PROXY_HOST" == *:* ]]; then
        san="IP:$SLADE_PROXY_HOST"
    else san="DNS:$SLADE_PROXY_HOST"; fi
    (umask 077 && mkdir -p "$dir")
    (umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$SLADE_PROXY_HOST" \
        -addext "subjectAltName=$san,DNS:localhost" -addext "basicConstraints=critical,CA:TRUE" \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null)
    echo "export SLADE_TLS_CERT=$dir/cert.pem SLADE_TLS_KEY=$dir/key.pem  # then: $0 proxy"
}

proxy() {  # nginx in front of both servers: TLS on SLADE_*_TLS_PORT, plain HTTP behind it
    : "${SLADE_TLS_CERT:?set SLADE_TLS_CERT and SLADE_TLS_KEY (or run: $0 self-signed-cert)}"
    : "${SLADE_TLS_KEY:?set SLADE_TLS_KEY, the key of SLADE_TLS_CERT}"
    check_exposure
    local conf="$SLADE_HOME/nginx" url="https://$SLADE_PROXY_HOST:$SLADE_PREFECT_TLS_PORT/api/health"
    command -v nginx >/dev/null || PATH="$PATH:/usr/sbin"
    command -v nginx >/dev/null || { echo "nginx not found: apt-get install -y nginx" >&2; return 1; }
    mkdir -p "$conf/tmp"
    ca_file >/dev/null
    SLADE_UPSTREAM_HOST=$LOCAL_HOST python - "$SLADE_REPO/deploy/nginx/slade-team.conf" \
        >"$conf/slade-team.conf" <<'EOF'
import os, re, sys

text = open(sys.argv[1]).read()
print(re.sub(r"@(SLADE_[A-Z0-9_]+)@", lambda m: os.environ[m[1]], text), end="")
EOF
    cat >"$conf/nginx.conf" <<EOF
# generated by scripts/team-stack.sh proxy: nginx run by this SLADE_HOME, not the system's
worker_processes 1;
pid $conf/nginx.pid;
error_log stderr;
events { worker_connections 512; }
http {
    access_log $LOGS/proxy-access.log;
    client_body_temp_path $conf/tmp/body;
    proxy_temp_path $conf/tmp/proxy;
    fastcgi_temp_path $conf/tmp/fastcgi;
    uwsgi_temp_path $conf/tmp/uwsgi;
    scgi_temp_path $conf/tmp/scgi;
    include $conf/slade-team.conf;
}
EOF
    nginx -t -q -e stderr -p "$conf" -c "$conf/nginx.conf" >"$LOGS/proxy.log" 2>&1 || {
        cat "$LOGS/proxy.log" >&2
        return 1
    }
    if alive proxy; then
        kill -HUP "$(cat "$PIDS/proxy.pid")" && echo "proxy: reloaded"
        return
    fi
    start proxy nginx -e stderr -p "$conf" -c "$conf/nginx.conf" -g "daemon off;"
    local deadline=$((SECONDS + 30))
    until curl -fs -o /dev/null --max-time 2 --cacert "$SECRETS/ca.pem" "$url"; do
        alive proxy && ((SECONDS < deadline)) || {
            echo "proxy not answering at $url; see $LOGS/proxy.log" >&2
            return 1
        }
        sleep 0.5
    done
    echo "proxy: Prefect https://$SLADE_PROXY_HOST:$SLADE_PREFECT_TLS_PORT," \
        "MLflow https://$SLADE_PROXY_HOST:$SLADE_MLFLOW_TLS_PORT"
}

down() {
    local file
    for file in "$PIDS"/worker*.pid; do [[ -e "$file" ]] && stop "$(basename "$file" .pid)"; done
    for name in proxy prefect-server mlflow-server s3; do stop "$name"; done
    postgres_down
}

status() {
    local name
    for name in postgres s3 prefect-server mlflow-server proxy worker; do
        if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"
        else echo "$name: not started by us"; fi
    done
}

case "${1:-}" in
up | down | status | proxy | setup) "$1" ;;
worker) worker "${2:-}" ;;
worker-env) worker_env "${2:-}" ;;
self-signed-cert) self_signed_cert ;;
*) echo "usage: $0 up|worker POOL|worker-env [DIR]|proxy|self-signed-cert|setup|down|status" >&2; exit 2 ;;
esac
