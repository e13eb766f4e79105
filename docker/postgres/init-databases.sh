#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is empty: MLflow's tracking database next to Airflow's.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE "${MLFLOW_DB_NAME:-mlflow}" OWNER "$POSTGRES_USER";
SQL
