#!/bin/sh
# MinIO for docker-compose.yml: the server, then (on every start, idempotent) the MLflow
# artifact bucket and the Prefect results bucket, each with its own account that can use
# that bucket only. The healthcheck waits for /tmp/slade-s3-ready, written when this is done.
set -eu
rm -f /tmp/slade-s3-ready
minio server /data --console-address ":9001" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit 0' TERM INT
until mc ready local >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || exit 1
    sleep 1
done
mc alias set store http://127.0.0.1:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

bucket_account() { # BUCKET ACCESS_KEY SECRET_KEY
    mc mb --ignore-existing "store/$1"
    cat >"/tmp/policy-$1.json" <<POLICY
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
 "Resource": ["arn:aws:s3:::$1", "arn:aws:s3:::$1/*"]}]}
POLICY
    mc admin policy create store "slade-$1" "/tmp/policy-$1.json"
    mc admin user add store "$2" "$3"
    mc admin policy attach store "slade-$1" --user "$2" || echo "policy already attached"
}
bucket_account "$MLFLOW_BUCKET" "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"
bucket_account "$RESULTS_BUCKET" "$RESULTS_S3_ACCESS_KEY" "$RESULTS_S3_SECRET_KEY"
touch /tmp/slade-s3-ready
wait "$pid"
