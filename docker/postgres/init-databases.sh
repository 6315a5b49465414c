#!/bin/sh
# Create the Prefect and MLflow databases on the first start of the postgres volume
# (the official image runs /docker-entrypoint-initdb.d/* only while the data dir is empty).
set -eu
for db in "$PREFECT_DB" "$MLFLOW_DB"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres --set db="$db" <<'SQL'
SELECT format('CREATE DATABASE %I', :'db')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
SQL
done
