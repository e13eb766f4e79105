#!/usr/bin/env bash
# Device call A: unpack the JRE, PySpark's Python side and the first half of Spark's jars into
# $RK (kept on the warm machine for call B), then the non-Spark GPU tests (QUICK=1: only unpack;
# SMOKE=1: and a harness run without Spark).
set -u
export RK=${RK:-/tmp/rk} PY=${PY:-python3}
mkdir -p "$RK/spark/jars"
tar xJf .devkit/a/jre.txz -C "$RK" && tar xJf .devkit/a/site.txz -C "$RK" && tar xJf .devkit/a/jars.txz -C "$RK/spark/jars" || exit 3
cp -r "$RK/site/pyspark/bin" "$RK/spark/"
# include/cluster.sh takes SPARK_HOME from where pyspark is imported: give that folder the jars too
ln -sfn "$RK/spark/jars" "$RK/site/pyspark/jars"
source .devkit/a/env.sh
nvidia-smi -L; java -version 2>&1 | head -1; nproc
$PY -c "import sys, torch, pandas, pyarrow, numpy, PIL, pytest; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.is_available(), 'pandas', pandas.__version__, 'pyarrow', pyarrow.__version__, 'numpy', numpy.__version__, 'PIL', PIL.__version__, 'pytest', pytest.__version__)"
cp .devkit/a/env.sh "$RK/"
[ -n "${QUICK:-}" ] && exit 0
timeout 120 $PY -m pytest -o minversion=0 -p no:cacheprovider -q -m gpu tests/spark/test_score_gpu.py -k "not spark_job" --junitxml="$OUT/a-junit.xml" 2>&1 | tail -15
[ -n "${SMOKE:-}" ] || exit 0
PYTHONUNBUFFERED=1 timeout 200 $PY -m include.bench.gpu --skip-spark --images "${IMAGES:-8192}" --rounds 1 --workdir "$RK/bench" --out "$OUT/smoke" 2>&1 | tail -12
