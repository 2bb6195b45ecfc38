# One entry point for set-up, tests, lint, benchmarks and the AC report.
# `make help` lists the targets. Everything installs into .venv from nothing.

PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. the PyTorch CPU or CUDA wheel index on hosted CI.
TORCH_PIP_ARGS ?=
WORKERS       ?= auto
PYTEST_ARGS   ?=

BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(TORCH_VERSION)
PYTEST := $(BIN)/python -m pytest

.DEFAULT_GOAL := help
.PHONY: help setup test test-cpu test-gpu lint report bench bench-xdist bench-ranks bench-budget bench-ac clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: TORCH_VERSION=$(TORCH_VERSION) TORCH_PIP_ARGS='$(TORCH_PIP_ARGS)' WORKERS=$(WORKERS) PYTEST_ARGS='$(PYTEST_ARGS)'"

setup: $(STAMP) ## create .venv with the pinned torch and the project (editable, with every extra)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e '.[test,dev,report,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

test: setup ## run every tier this machine supports (others are reported as not run here)
	$(PYTEST) -n $(WORKERS) $(PYTEST_ARGS)

test-cpu: setup ## run the CPU tier (what CI runs on hosted runners)
	$(PYTEST) --tier cpu -n $(WORKERS) $(PYTEST_ARGS)

test-gpu: setup ## run the GPU tiers this host supports (gpu; multigpu with 2+ GPUs), one xdist worker per GPU
	$(PYTEST) --tier "$$($(BIN)/python -m harness gpu-tiers)" -n "$$($(BIN)/python -m harness gpus)" $(PYTEST_ARGS)

lint: setup ## ruff, workflow schema + zizmor security audit, hadolint on every Dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --min-severity high .github
	$(BIN)/hadolint $$(find docker -name 'Dockerfile*' ! -name '*.dockerignore')
	$(BIN)/shellcheck $$(find docker -name '*.sh')

report: setup ## every AC mode on the reference models: tables on stdout, reports/ac-report.{json,png}
	$(BIN)/python -m harness report

bench: bench-xdist bench-ranks bench-budget bench-ac ## run every benchmark (figures go into bench/README.md by hand)

bench-xdist: setup ## CPU tier wall time, -n 2 against -n 0, side by side
	$(BIN)/python bench/xdist_speedup.py --workers 2 --repeats 2

bench-ranks: setup ## 40 two-rank tests: harness.ranks pools vs torch's MultiProc* test cases
	$(BIN)/python bench/ranks_bench.py

bench-budget: setup ## memory_budget mode: profiling cost per block, solver time, gap to the optimum
	$(BIN)/python bench/budget_bench.py

bench-ac: setup ## every AC mode eager and compiled: step time vs none, activation bytes, SAC cost per op; gradients with dropout
	$(BIN)/python bench/ac_bench.py --compiled
	$(BIN)/python bench/random_ops_bench.py

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
