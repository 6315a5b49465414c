# Environment of the team stack (scripts/team-stack.sh); `source scripts/team-env.sh` to use
# the prefect / mlflow CLIs against it, or on another machine before starting a worker there.
# Every value can be preset by the caller; docker-compose.yml sets the same variables.
# Its own SLADE_HOME: pids, logs and stage directories apart from `make demo`'s .slade.
SLADE_HOME="${SLADE_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.slade-team}"
export SLADE_HOME

# The address every server listens on (Prefect, MLflow, S3, PostgreSQL): 127.0.0.1 keeps the
# stack to this machine; the team network's interface (or 0.0.0.0) opens it to workers on
# other machines, which team-stack.sh allows only with authentication on (SLADE_TEAM_AUTH).
export SLADE_BIND_HOST="${SLADE_BIND_HOST:-127.0.0.1}"
# The name clients use to reach the servers (this machine's name on the team network when
# the servers listen on every interface); worker-env prints addresses with it.
if [[ -z "${SLADE_SERVER_HOST:-}" ]]; then
    case "$SLADE_BIND_HOST" in
    0.0.0.0 | "::") SLADE_SERVER_HOST=$(hostname -f 2>/dev/null || hostname) ;;
    *) SLADE_SERVER_HOST=$SLADE_BIND_HOST ;;
    esac
fi
export SLADE_SERVER_HOST
# on: a Prefect auth string and MLflow users (admin, pipeline, viewer), generated once into
# SLADE_SECRETS_DIR; off: open servers, refused unless every listen address is loopback.
export SLADE_TEAM_AUTH="${SLADE_TEAM_AUTH:-on}"
export SLADE_SECRETS_DIR="${SLADE_SECRETS_DIR:-$SLADE_HOME/team}"
export SLADE_PREFECT_PORT="${SLADE_PREFECT_PORT:-4200}"
export SLADE_MLFLOW_PORT="${SLADE_MLFLOW_PORT:-5000}"
export PREFECT_API_URL="${PREFECT_API_URL:-http://$SLADE_SERVER_HOST:$SLADE_PREFECT_PORT/api}"
export PREFECT_UI_URL="${PREFECT_UI_URL:-${PREFECT_API_URL%/api}}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://$SLADE_SERVER_HOST:$SLADE_MLFLOW_PORT}"
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# The pipeline's credentials for this machine's clients (the CLIs, the workers and the flow
# runs they start), read from the secrets files `team-stack.sh up` wrote; a worker on another
# machine exports them from its own copies (`team-stack.sh worker-env`).
team_credentials() {
    [[ "$SLADE_TEAM_AUTH" == on ]] || return 0
    if [[ -z "${PREFECT_API_AUTH_STRING:-}" && -s "$SLADE_SECRETS_DIR/prefect-auth" ]]; then
        PREFECT_API_AUTH_STRING=$(<"$SLADE_SECRETS_DIR/prefect-auth")
        export PREFECT_API_AUTH_STRING
    fi
    if [[ -z "${MLFLOW_TRACKING_PASSWORD:-}" && -s "$SLADE_SECRETS_DIR/mlflow-pipeline" ]]; then
        export MLFLOW_TRACKING_USERNAME=pipeline
        MLFLOW_TRACKING_PASSWORD=$(<"$SLADE_SECRETS_DIR/mlflow-pipeline")
        export MLFLOW_TRACKING_PASSWORD
    fi
}
team_credentials

# S3: an existing server (MinIO, AWS, ...) when SLADE_S3_ENDPOINT_URL is set, else the local
# moto server team-stack.sh starts on SLADE_S3_PORT (in memory: for trying out and tests).
if [[ -z "${SLADE_S3_ENDPOINT_URL:-}" ]]; then
    export SLADE_S3_LOCAL=1
    export SLADE_S3_PORT="${SLADE_S3_PORT:-9000}"
    export SLADE_S3_ENDPOINT_URL="http://$SLADE_SERVER_HOST:$SLADE_S3_PORT"
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-slade-local}"     # moto accepts any keys
    export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-slade-local}"
fi
export SLADE_S3_ENDPOINT_URL
export SLADE_MLFLOW_BUCKET="${SLADE_MLFLOW_BUCKET:-mlflow-artifacts}"
export SLADE_RESULTS_BUCKET="${SLADE_RESULTS_BUCKET:-prefect-results}"
export SLADE_RESULTS_BLOCK="${SLADE_RESULTS_BLOCK:-slade-results}"
# boto3 (Prefect results, bucket set-up) reaches a non-AWS S3 through this endpoint.
export AWS_ENDPOINT_URL_S3="${AWS_ENDPOINT_URL_S3:-$SLADE_S3_ENDPOINT_URL}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"

# Prefect task and flow results go to S3 (a prefect-aws S3Bucket block that names only the
# bucket; keys and endpoint come from each machine's AWS_* variables), so a stage run by a
# worker on another machine hands its result back, and a retry finds it there.
export PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK="${PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK:-s3-bucket/$SLADE_RESULTS_BLOCK}"
export PREFECT_RESULTS_PERSIST_BY_DEFAULT="${PREFECT_RESULTS_PERSIST_BY_DEFAULT:-true}"

# PostgreSQL for both servers: an existing one (SLADE_DATABASE_URL=postgresql://user:pw@host:port,
# with databases `prefect` and `mlflow`), else a local cluster team-stack.sh runs in
# SLADE_PG_DATA on SLADE_PG_PORT (5433: leaves 5432 to a system server).
export SLADE_PG_PORT="${SLADE_PG_PORT:-5433}"
export SLADE_PG_DATA="${SLADE_PG_DATA:-$SLADE_HOME/postgres}"
