#!/usr/bin/env bash
# Device call B (right after A, on the same warm machine): the rest of Spark's jars, then the GPU
# tests with Spark and the full GPU benchmark, its Spark job on a standalone master and one worker
# offering the GPU (one executor per GPU; local mode instead if the cluster cannot start; CLUSTER=0
# asks for local mode).
set -u
export RK=${RK:-/tmp/rk} PY=${PY:-python3}
test -d "$RK/jre0" || { echo "call A's files are gone: the machine was not warm"; exit 4; }
tar xJf .devkit/b/jars.txz -C "$RK/spark/jars" || exit 3
source "$RK/env.sh"
ls "$RK/spark/jars" | wc -l
[ -n "${SKIP_TESTS:-}" ] || timeout 240 $PY -m pytest -o minversion=0 -p no:cacheprovider -q -m gpu tests/spark/test_score_gpu.py --junitxml="$OUT/b-junit.xml" 2>&1 | tail -15
bench() { PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT:-300}" $PY -m include.bench.gpu --images "${IMAGES:-8192}" --rounds "${ROUNDS:-2}" --workdir "$RK/bench" "$@" ${BENCH_ARGS:-} 2>&1 | grep -v "^\s*$" | tail -25; return "${PIPESTATUS[0]}"; }
if [ "${CLUSTER:-1}" = 1 ]; then
  bench --cluster --out "$OUT/gpu"; rc=$?
  # the cluster did not start or the job failed (not a timeout): show why, then run in local mode
  if [ "$rc" != 0 ] && [ "$rc" != 124 ]; then tail -n 30 "$RK"/bench/cluster/cluster/logs/*; bench --out "$OUT/gpu-local"; fi
else
  bench --out "$OUT/gpu-local"
fi
