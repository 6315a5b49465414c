#!/usr/bin/env bash
# Local services for the pipeline, on 127.0.0.1 only:
#   up     Prefect server, MLflow server (SQLite + local artifacts), one process worker on
#          `cpu-pool`; each reused when already healthy. PIDs in $SLADE_HOME/pids, logs in
#          $SLADE_HOME/logs.
#   down   stop what `up` started (by recorded process id; servers we reused are left alone).
#   status what runs.
# scripts/team-stack.sh sources this file for its helpers (start, server, stop, ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PIDS="$SLADE_HOME/pids"
LOGS="$SLADE_HOME/logs"
mkdir -p "$PIDS" "$LOGS" "$SLADE_HOME/mlflow/artifacts" "$PREFECT_HOME" "$SLADE_RUNS_DIR"

healthy() { curl -fs -o /dev/null --max-time 2 "$1"; }

alive() {  # pid file exists and its process runs
    [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null
}

start() {  # start NAME CMD...: in its own process group, output to the log
    local name=$1
    shift
    echo "starting $name (log: $LOGS/$name.log)"
    (cd "$SLADE_REPO" && exec setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null) &
    echo $! >"$PIDS/$name.pid"
}

wait_healthy() {  # wait_healthy NAME URL SECONDS
    local name=$1 url=$2 deadline=$((SECONDS + $3))
    until healthy "$url"; do
        if ! alive "$name"; then
            echo "$name exited; last log lines:" >&2
            tail -n 30 "$LOGS/$name.log" >&2
            exit 1
        fi
        if ((SECONDS > deadline)); then
            echo "$name not healthy at $url after $3 s; see $LOGS/$name.log" >&2
            exit 1
        fi
        sleep 0.5
    done
}

server() {  # server NAME HEALTH_URL CMD...
    local name=$1 url=$2
    shift 2
    if healthy "$url"; then
        echo "$name: reusing the one at $url"
        return
    fi
    alive "$name" || start "$name" "$@"
    wait_healthy "$name" "$url" "${SLADE_START_TIMEOUT:-180}"
    echo "$name: up at $url"
}

up() {
    local mlflow_url="http://127.0.0.1:$SLADE_MLFLOW_PORT"
    server prefect-server "$PREFECT_API_URL/health" \
        prefect server start --host 127.0.0.1 --port "$SLADE_PREFECT_PORT" &
    server mlflow-server "$mlflow_url/health" \
        mlflow server --host 127.0.0.1 --port "$SLADE_MLFLOW_PORT" --workers 1 \
        --backend-store-uri "sqlite:///$SLADE_HOME/mlflow/mlflow.db" \
        --artifacts-destination "$SLADE_HOME/mlflow/artifacts" \
        --allowed-hosts "127.0.0.1:$SLADE_MLFLOW_PORT,localhost:$SLADE_MLFLOW_PORT" &
    wait -n; wait -n  # both servers start in parallel; fail if either fails (not `&&`: set -e)
    for pool in cpu-pool gpu-pool; do
        prefect work-pool inspect "$pool" >/dev/null 2>&1 ||
            prefect work-pool create "$pool" --type process >/dev/null
    done
    if alive worker; then
        echo "worker: reusing pid $(cat "$PIDS/worker.pid")"
    else
        start worker prefect worker start --pool cpu-pool --type process --name "slade-local-$$"
    fi
    echo "Prefect UI: $PREFECT_UI_URL"
    echo "MLflow UI:  $mlflow_url"
}

stop() {  # stop NAME: the process group we started, by its recorded pid
    local name=$1 pid
    alive "$name" || { rm -f "$PIDS/$name.pid"; return 0; }
    pid=$(cat "$PIDS/$name.pid")
    echo "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDS/$name.pid"
}

down() {
    local name
    for name in worker prefect-server mlflow-server; do stop "$name"; done
}

status() {
    local name
    for name in prefect-server mlflow-server worker; do
        if alive "$name"; then echo "$name: running (pid $(cat "$PIDS/$name.pid"))"
        else echo "$name: not started by us"; fi
    done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
    up | down | status) "$1" ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
    esac
fi
