#!/usr/bin/env bash
# Start the embedded Airflow (SQLite, LocalExecutor) on 127.0.0.1 only: api-server on :8080,
# scheduler, dag-processor and triggerer. Ctrl-C stops them all. Login: admin / admin
# (a demo password: override with RESCORE_AIRFLOW_ADMIN_PASSWORD).
set -euo pipefail
: "${AIRFLOW_HOME:?run through make airflow}"
port=${RESCORE_AIRFLOW_PORT:-8080}
mkdir -p "$AIRFLOW_HOME"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=$port
export AIRFLOW__API__BASE_URL=http://127.0.0.1:$port
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$port/execution/
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-2}
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=$AIRFLOW_HOME/simple_auth_manager_passwords.json
printf '{"admin": "%s"}\n' "${RESCORE_AIRFLOW_ADMIN_PASSWORD:-admin}" > "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1
# Every task's Spark driver starts from a class-data archive of Spark's classes (made here once,
# about 20 s: include/jvm_archive.py); RESCORE_JVM_ARCHIVE=0 leaves SPARK_SUBMIT_OPTS alone.
if [ "${RESCORE_JVM_ARCHIVE:-1}" != 0 ] && [[ "${SPARK_SUBMIT_OPTS:-}" != *SharedArchiveFile* ]]; then
  if option=$(python -m include.jvm_archive 2>> "$AIRFLOW_HOME/jvm-archive.log"); then
    export SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:+$SPARK_SUBMIT_OPTS }$option"
  fi
fi

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
airflow api-server --host 127.0.0.1 --port "$port" --workers 1 > "$AIRFLOW_HOME/api-server.log" 2>&1 & pids+=($!)
airflow scheduler --skip-serve-logs > "$AIRFLOW_HOME/scheduler.log" 2>&1 & pids+=($!)
airflow dag-processor > "$AIRFLOW_HOME/dag-processor.log" 2>&1 & pids+=($!)
airflow triggerer --skip-serve-logs > "$AIRFLOW_HOME/triggerer.log" 2>&1 & pids+=($!)
if [ -n "${RESCORE_AIRFLOW_ADMIN_PASSWORD:-}" ]; then login="admin / the password in RESCORE_AIRFLOW_ADMIN_PASSWORD"; else login="admin / admin, a demo password"; fi
echo "Airflow UI: http://127.0.0.1:$port ($login); logs in $AIRFLOW_HOME/*.log; Ctrl-C stops"
wait -n "${pids[@]}"
