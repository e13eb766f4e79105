#!/usr/bin/env bash
# A standalone Spark cluster on loopback from the scripts that ship with pyspark:
# one master and two workers (1 core, 2 GiB each), logs/pids/work under $RESCORE_HOME/cluster.
#   include/cluster.sh up | down | status
# Sizes by environment: RESCORE_SPARK_WORKERS (2), RESCORE_SPARK_WORKER_CORES (1),
# RESCORE_SPARK_WORKER_MEMORY (2g), RESCORE_SPARK_WORKER_GPUS (0: each worker offers that many GPUs,
# found by RESCORE_SPARK_GPU_DISCOVERY, default include/spark/get_gpus_resources.sh; a GPU
# host runs one worker, since workers on one host would each claim the same addresses).
# Point the DAGs at it with AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "spark://127.0.0.1:7077"}'.
set -euo pipefail
: "${RESCORE_HOME:?set RESCORE_HOME (make cluster-up does)}"
python=${RESCORE_SPARK_PYTHON:-$(dirname "$0")/../.venv/bin/python}
python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")
SPARK_HOME=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME
cluster=$RESCORE_HOME/cluster
export SPARK_LOG_DIR=$cluster/logs SPARK_PID_DIR=$cluster/pids SPARK_WORKER_DIR=$cluster/work
export SPARK_LOCAL_IP=127.0.0.1 SPARK_MASTER_HOST=127.0.0.1 SPARK_IDENT_STRING=rescore
export PYSPARK_PYTHON=$python
# executors import spark_jobs from the checkout (its Python daemon is spark_jobs.worker_daemon)
PYTHONPATH=$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH
master_port=${RESCORE_SPARK_MASTER_PORT:-7077}
ui_port=${RESCORE_SPARK_MASTER_UI_PORT:-8090}
workers=${RESCORE_SPARK_WORKERS:-2}
worker_cores=${RESCORE_SPARK_WORKER_CORES:-1}
worker_memory=${RESCORE_SPARK_WORKER_MEMORY:-2g}
worker_gpus=${RESCORE_SPARK_WORKER_GPUS:-0}
discovery=${RESCORE_SPARK_GPU_DISCOVERY:-$(cd "$(dirname "$0")" && pwd)/spark/get_gpus_resources.sh}
if [ "$worker_gpus" != 0 ]; then
  [ "$workers" = 1 ] || { echo "RESCORE_SPARK_WORKER_GPUS needs RESCORE_SPARK_WORKERS=1 (one GPU worker per host)" >&2; exit 2; }
  [ -x "$discovery" ] || { echo "GPU discovery script $discovery is missing or not executable" >&2; exit 2; }
  export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:-} -Dspark.worker.resource.gpu.amount=$worker_gpus -Dspark.worker.resource.gpu.discoveryScript=$discovery"
fi
daemon=$SPARK_HOME/sbin/spark-daemon.sh
MASTER=org.apache.spark.deploy.master.Master
WORKER=org.apache.spark.deploy.worker.Worker

alive_workers() {
  "$python" - "$ui_port" <<'PY'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/json/", timeout=2) as r:
        print(sum(w["state"] == "ALIVE" for w in json.load(r)["workers"]))
except Exception:
    print(-1)
PY
}

stop_daemon() { # class instance: stop it and wait until the process has exited (spark-daemon.sh
  # returns after sending the signal and removes the pid file, so read the pid first)
  local pidfile=$SPARK_PID_DIR/spark-$SPARK_IDENT_STRING-$1-$2.pid pid=
  [ -f "$pidfile" ] && pid=$(cat "$pidfile")
  "$daemon" stop "$1" "$2" >/dev/null 2>&1 || true
  [ -n "$pid" ] || return 0
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
  up)
    mkdir -p "$SPARK_LOG_DIR" "$SPARK_PID_DIR" "$SPARK_WORKER_DIR"
    "$daemon" start $MASTER 1 --host 127.0.0.1 --port "$master_port" --webui-port "$ui_port" >/dev/null
    for i in $(seq 1 "$workers"); do
      "$daemon" start $WORKER "$i" --host 127.0.0.1 --cores "$worker_cores" --memory "$worker_memory" \
        --webui-port $((ui_port + i)) --work-dir "$SPARK_WORKER_DIR/$i" "spark://127.0.0.1:$master_port" >/dev/null
    done
    for _ in $(seq 1 120); do
      [ "$(alive_workers)" -ge "$workers" ] && { echo "spark://127.0.0.1:$master_port up with $workers workers (UI http://127.0.0.1:$ui_port)"; exit 0; }
      sleep 0.5
    done
    echo "the cluster did not come up: see $SPARK_LOG_DIR" >&2; exit 1 ;;
  down)
    for i in $(seq 1 "$workers"); do stop_daemon $WORKER "$i"; done
    stop_daemon $MASTER 1
    echo "cluster stopped" ;;
  status)
    echo "alive workers: $(alive_workers)" ;;
  *)
    echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
