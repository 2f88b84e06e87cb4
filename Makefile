# Every target creates .venv on first use; nothing else is needed on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# make bench BENCH_FLAGS=--write records the results in bench/RESULTS.md (tracked)
BENCH_FLAGS ?=

.PHONY: demo test lint bench docs dashboards clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,load]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/payswitch demo

test: $(STAMP)
	sh dashboards/install-prometheus.sh
	sh loadtests/install-chromium.sh
	sh loadtests/install-haproxy.sh
	$(BIN)/ruff check switch channels tests bench loadtests dashboards
	$(BIN)/mypy
	@# Three processes, each test file whole in one (--dist loadfile): the suite mostly
	@# waits on the switches, simulators and generators it starts, and one process at a
	@# time took it past its 10 minutes (541 s against 295 s, quiet 2-core machine). On a
	@# slower 2-core machine two took 553 and 606 s, three 506 and 494 s, same clone.
	$(BIN)/python -m pytest -q -m "not slow" -n 3 --dist loadfile --durations=25

lint: $(STAMP)
	$(BIN)/ruff check switch channels tests bench loadtests dashboards
	$(BIN)/mypy

# The bench extra (pandas, polars) is only for bench/recon/bench_recon.py's comparisons.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,load,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/micro.py $(BENCH_FLAGS)
	$(BIN)/python bench/e2e.py $(BENCH_FLAGS)

docs: $(STAMP)
	$(BIN)/python -m switch.cli.catalogue > docs/metrics.md.tmp && mv docs/metrics.md.tmp docs/metrics.md
	$(BIN)/python -m switch.cli.reference

dashboards: $(STAMP)
	$(BIN)/python -m dashboards.generate

clean:
	rm -rf $(VENV) build *.egg-info
