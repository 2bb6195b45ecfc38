# One entry point for set-up, tests, lint, benchmarks and the AC report.
# `make help` lists the targets. Everything installs into .venv from nothing,
# or, with VENV= (empty), runs in an interpreter that already has torch.

PYTHON        ?= python3
VENV          ?= .venv
TORCH_VERSION ?= 2.13.0
# Extra pip arguments for torch, e.g. the PyTorch CPU or CUDA wheel index on hosted CI.
TORCH_PIP_ARGS ?=
WORKERS       ?= auto
PYTEST_ARGS   ?=
MATRIX_ARGS   ?=
# mutmut name patterns for `make mutate` (e.g. 'ac.*' or 'harness.ranks.*'); empty: every mutant.
MUTANTS       ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
ifeq ($(strip $(VENV)),)
# Pre-provisioned: $(PYTHON) as it is (its torch is never replaced), the project from
# this checkout; `make setup` only checks it and installs missing test dependencies.
RUN    := PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON)
SETUP  := provision
# Load the plugin by module name unless an installed ac-harness registers its entry point.
PLUGIN := $(if $(shell $(PYTHON) -c "import importlib.metadata as m; m.distribution('ac-harness')" 2>/dev/null && echo installed),,-p harness.plugin)
else
RUN    := $(BIN)/python
SETUP  := $(STAMP)
PLUGIN :=
endif
PYTEST := $(RUN) -m pytest $(PLUGIN)
# Tests range from milliseconds to tens of seconds: idle workers steal queued ones.
XDIST  := -n $(WORKERS) --dist worksteal

.DEFAULT_GOAL := help
.PHONY: help setup provision test test-cpu test-gpu durations matrix lint report bench bench-xdist bench-ranks bench-torch-suites bench-budget bench-ac bench-sched mutate clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: VENV=$(VENV) PYTHON=$(PYTHON) TORCH_VERSION=$(TORCH_VERSION) TORCH_PIP_ARGS='$(TORCH_PIP_ARGS)' WORKERS=$(WORKERS) PYTEST_ARGS='$(PYTEST_ARGS)' MUTANTS='$(MUTANTS)'"
	@echo "  VENV= (empty): use PYTHON as it is, e.g. a GPU image's own torch: make test-gpu VENV= PYTHON=python3"

setup: $(SETUP) ## create .venv with the pinned torch and the project (with VENV=: check PYTHON, install only what lacks)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e '.[test,dev,report,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

provision:
	$(RUN) -m harness provision --install

test: setup ## run every tier this machine supports (others are reported as not run here)
	$(PYTEST) $(XDIST) $(PYTEST_ARGS)

test-cpu: setup ## run the CPU tier (what CI runs on hosted runners)
	$(PYTEST) --tier cpu $(XDIST) $(PYTEST_ARGS)

test-gpu: setup ## run the GPU tiers this host supports (gpu; multigpu with 2+ GPUs), one xdist worker per GPU
	$(PYTEST) --tier "$$($(RUN) -m harness gpu-tiers)" -n "$$($(RUN) -m harness gpus)" $(PYTEST_ARGS)

durations: setup ## refresh .test_durations (what CI shards on when it has no fresher record) from a CPU-tier run
	$(PYTEST) --tier cpu $(XDIST) --record-durations .test_durations $(PYTEST_ARGS)

matrix: setup ## print the CI job matrix from the collected tests (MATRIX_ARGS='--check' to check it)
	$(RUN) -m harness matrix $(MATRIX_ARGS)

lint: setup ## ruff, workflow schema + zizmor security audit, hadolint on every Dockerfile, shellcheck on every script
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --min-severity high .github
	$(BIN)/hadolint $$(find docker -name 'Dockerfile*' ! -name '*.dockerignore')
	$(BIN)/shellcheck $$(find docker -name '*.sh')

report: setup ## every AC mode on the reference models: tables on stdout, reports/ac-report.{json,png}
	$(RUN) -m ackit report

bench: bench-xdist bench-ranks bench-torch-suites bench-budget bench-ac bench-sched ## run every benchmark (figures go into bench/README.md by hand)

bench-xdist: setup ## CPU tier wall time, -n 2 against -n 0, side by side
	$(RUN) bench/xdist_speedup.py --workers 2 --repeats 2

bench-ranks: setup ## 40 two-rank tests: harness.ranks pools vs torch's MultiProc* test cases, warm-pool cost per test
	$(RUN) bench/ranks_bench.py

bench-torch-suites: setup ## torch's shipped distributed suite (gloo, 2 and 3 ranks): torch's runner vs --pool-torch-tests, outcome diff and time ratio (half an hour)
	$(RUN) bench/torch_suites_bench.py --world-size 2 --every 1
	$(RUN) bench/torch_suites_bench.py --world-size 3 --every 10

bench-budget: setup ## memory_budget mode: profiling cost per block, solver time, gap to the optimum
	$(RUN) bench/budget_bench.py

bench-sched: setup ## GPU test scheduling on 8 fake GPUs, this checkout vs main: busy share, makespan / bound, large-test waits
	$(RUN) bench/gpu_sched_bench.py

bench-ac: setup ## every AC mode eager, traced eager (aot_eager) and inductor in one timing: step time with spread vs none, bytes, bitwise grads; gradients with dropout
	$(RUN) bench/ac_bench.py --compiled
	$(RUN) bench/random_ops_bench.py

mutate: setup ## mutation testing (mutmut) of ac/, ackit/ and the in-process harness (MUTANTS= for a part): score, survivors
	set -f; $(RUN) -m mutmut run $(MUTANTS)
	set -f; $(RUN) bench/mutation_score.py --select $(MUTANTS)

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info mutants
