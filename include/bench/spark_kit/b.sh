#!/usr/bin/env bash
# Device call B (right after A, on the same warm machine): the rest of Spark's jars, then the GPU
# tests with Spark and the full GPU benchmark.
set -u
export RK=${RK:-/tmp/rk} PY=${PY:-python3}
test -d "$RK/jre0" || { echo "call A's files are gone: the machine was not warm"; exit 4; }
tar xJf .devkit/b/jars.txz -C "$RK/spark/jars" || exit 3
source "$RK/env.sh"
ls "$RK/spark/jars" | wc -l
timeout 240 $PY -m pytest -o minversion=0 -p no:cacheprovider -q -m gpu tests/spark/test_score_gpu.py --junitxml="$OUT/b-junit.xml" 2>&1 | tail -15
PYTHONUNBUFFERED=1 timeout "${BENCH_TIMEOUT:-300}" $PY -m include.bench.gpu --images "${IMAGES:-8192}" --rounds "${ROUNDS:-3}" --workdir "$RK/bench" --out "$OUT/gpu" 2>&1 | grep -v "^\s*$" | tail -25
