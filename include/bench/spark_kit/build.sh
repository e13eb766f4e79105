#!/usr/bin/env bash
# Builds a portable Spark for a GPU machine that has CUDA PyTorch but no Java and no network
# (the device machines this project is lent): a jlink'd Java 17 runtime, the PySpark 4.2 jars a
# scoring job loads in local mode and on a standalone master + worker (jars.txt, found with
# -Xlog:class+load in the driver, the daemons and the executor; Hive, MLlib, Connect,
# Kubernetes and RocksDB left out) and PySpark's Python side, in two halves under 64 MiB each:
#   .devkit/a  JRE + PySpark's Python package + jars, a.sh   (call A: unpack, GPU tests, smoke)
#   .devkit/b  the five largest jars, b.sh                  (call B, same warm machine: Spark)
# Usage: include/bench/spark_kit/build.sh   (from the repository root, after make install)
# Then: run `bash .devkit/a/run.sh` carrying .devkit/a, and at once `bash .devkit/b/run.sh`
# carrying .devkit/b (docs/benchmarks/gpu/NOTES.md).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
site=$(.venv/bin/python -c 'import pyspark, os; print(os.path.dirname(os.path.dirname(pyspark.__file__)))')
jdk=$(dirname "$(dirname "$(readlink -f "$(command -v javac || command -v java)")")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -q '^/.devkit/' "$(git rev-parse --git-dir)/info/exclude" 2>/dev/null || echo '/.devkit/' >>"$(git rev-parse --git-dir)/info/exclude"
rm -rf .devkit && mkdir -p .devkit/a .devkit/b

"$jdk/bin/jlink" --add-modules java.base,java.desktop,java.logging,java.management,java.naming,java.security.jgss,java.sql,java.xml,jdk.management,jdk.net,jdk.security.auth,jdk.unsupported,jdk.localedata,jdk.incubator.vector \
  --include-locales=en,en-US --strip-debug --no-man-pages --no-header-files --compress=0 --output "$work/jre0"
strip --strip-unneeded "$work/jre0/lib/server/libjvm.so"
(cd "$work/jre0/lib" && rm -f libawt_xawt.so libsplashscreen.so libjsound.so libfontmanager.so liblcms.so libjavajpeg.so libmlib_image.so libjawt.so)
tar cf - -C "$work" jre0 | xz -T0 -6 >.devkit/a/jre.txz

mkdir -p "$work/site"
rsync -a --exclude jars --exclude tests --exclude __pycache__ --exclude examples "$site/pyspark" "$site/py4j" "$work/site/"
tar cf - -C "$work" site | xz -T0 -6 >.devkit/a/site.txz

# Jars stored uncompressed, so that xz sees across files (about half the size of the jars as shipped).
mkdir -p "$work/jars"
.venv/bin/python - "$site/pyspark/jars" "$work/jars" "$here/jars.txt" <<'PY'
import sys, zipfile, pathlib
src, dst, names = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]).read_text().split()
for name in names:
    with zipfile.ZipFile(src / name) as zin, zipfile.ZipFile(dst / name, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            entry = zipfile.ZipInfo(info.filename, info.date_time)
            entry.external_attr = info.external_attr
            zout.writestr(entry, zin.read(info.filename))
PY
big='^(hadoop-client-runtime|hadoop-client-api|spark-catalyst|spark-core|spark-sql_)'
(cd "$work/jars" && tar cf - $(ls | grep -vE "$big") | xz -T0 -6 >"$OLDPWD/.devkit/a/jars.txz")
(cd "$work/jars" && tar cf - $(ls | grep -E "$big") | xz -T0 -6 >"$OLDPWD/.devkit/b/jars.txz")
cp "$here/a.sh" .devkit/a/run.sh && cp "$here/env.sh" .devkit/a/env.sh && cp "$here/b.sh" .devkit/b/run.sh
du -sh .devkit/a .devkit/b
