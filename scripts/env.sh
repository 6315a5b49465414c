# Environment of the local slade services; `source scripts/env.sh` to use the prefect/mlflow
# CLIs against them. Every value can be preset by the caller (tests use other ports/dirs).
SLADE_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SLADE_REPO
export SLADE_HOME="${SLADE_HOME:-$SLADE_REPO/.slade}"
export SLADE_VENV="${SLADE_VENV:-$SLADE_REPO/.venv}"
export SLADE_PREFECT_PORT="${SLADE_PREFECT_PORT:-4200}"
export SLADE_MLFLOW_PORT="${SLADE_MLFLOW_PORT:-5000}"
export SLADE_RUNS_DIR="${SLADE_RUNS_DIR:-$SLADE_HOME/runs}"
export PREFECT_HOME="${PREFECT_HOME:-$SLADE_HOME/prefect}"
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:$SLADE_PREFECT_PORT/api}"
export PREFECT_UI_URL="${PREFECT_UI_URL:-http://127.0.0.1:$SLADE_PREFECT_PORT}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# slade_core's log records (data checks, stage progress) go to the Prefect UI's run logs too.
export PREFECT_LOGGING_EXTRA_LOGGERS="${PREFECT_LOGGING_EXTRA_LOGGERS:-slade_core}"
# ... and outside a flow run (slade search, benchmarks) they are not sent, without a warning.
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="${PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW:-ignore}"
export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-2}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:$SLADE_MLFLOW_PORT}"
export DO_NOT_TRACK=1
export PATH="$SLADE_VENV/bin:$PATH"
