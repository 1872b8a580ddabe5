# Two commands: `make demo` (set up, build the default spec, then a 3-trial budgeted search on shapes) and
# `make test` (set up, run the tests; `.ci/run` runs it on a clean clone). `make test-all` adds the
# tests marked slow: the per-spec export and optimize checks on every spec, not only on one spec per
# family (about 45 minutes more on 2 cores).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC ?= specs/swin_t.yaml
# processes (one torch thread each) the search benchmarks train in: make bench-search WORKERS=2
WORKERS ?= 1

.PHONY: demo test test-all bench bench-search clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/archdsl build $(SPEC)
	rm -rf results/demo
	$(BIN)/archdsl search search/mixer_placement.yaml --trials 3 --out results/demo

# the tests run in one process per core (pytest-xdist; an idle process takes tests queued for a busy one)
PYTEST := $(BIN)/python -m pytest -q -n auto --dist worksteal

test: $(VENV)/.installed
	$(PYTEST) -m "not slow"

test-all: $(VENV)/.installed
	$(PYTEST)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/cost_model.py
	$(BIN)/python benchmarks/mixer_scaling.py
	$(BIN)/python benchmarks/inference.py

bench-search: $(VENV)/.installed
	cd benchmarks && ../$(BIN)/python proxy_correlation.py --json ../results/proxy_correlation.json --cache ../results/curves.json --workers $(WORKERS)
	cd benchmarks && ../$(BIN)/python search_quality.py --cache ../results/curves.json --workers $(WORKERS)
	cd benchmarks && ../$(BIN)/python pruners.py --cache ../results/curves.json --workers $(WORKERS)

clean:
	rm -rf $(VENV) build *.egg-info
