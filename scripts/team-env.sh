# Environment of the team stack (scripts/team-stack.sh); `source scripts/team-env.sh` to use
# the prefect / mlflow CLIs against it, or on another machine before starting a worker there.
# Every value can be preset by the caller; docker-compose.yml sets the same variables.
# Its own SLADE_HOME: pids, logs and stage directories apart from `make demo`'s .slade.
SLADE_HOME="${SLADE_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.slade-team}"
export SLADE_HOME
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

# S3: an existing server (MinIO, AWS, ...) when SLADE_S3_ENDPOINT_URL is set, else the local
# moto server team-stack.sh starts on SLADE_S3_PORT (in memory: for trying out and tests).
if [[ -z "${SLADE_S3_ENDPOINT_URL:-}" ]]; then
    export SLADE_S3_LOCAL=1
    export SLADE_S3_PORT="${SLADE_S3_PORT:-9000}"
    export SLADE_S3_ENDPOINT_URL="http://127.0.0.1:$SLADE_S3_PORT"
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
