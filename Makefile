# Every target that needs tools depends on `bootstrap`, which installs them (apt packages,
# the virtualenv, the Kafka jars, the Kubernetes build) and is quick once they exist.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Extra flags for `make bench`, e.g. BENCH_ARGS="--jobs 50000 --workers 3".
BENCH_ARGS ?=

.PHONY: help bootstrap lint format proto test test-unit bench demo dev-env clean sync-crds kind-e2e

help:
	@echo "make test      install what is missing, lint, run every test against real servers"
	@echo "make demo      install what is missing, start the local environment and show it"
	@echo "make dev-env   start the local environment and keep it up for hand use (Ctrl-C ends it)"
	@echo "make lint      ruff (format and lint), mypy strict, import-linter"
	@echo "make format    rewrite the code in the house format"
	@echo "make proto     regenerate jobqueue/api/v1 from proto/"
	@echo "make kind-e2e  build the images, install the chart on a kind cluster, run tests/e2e/kind (needs Docker)"
	@echo "make sync-crds copy crds/ into the Helm chart and the kustomize base"
	@echo "make bench     benchmark the whole stack; table on stdout, bench-results.json"

bootstrap:
	@bash scripts/bootstrap.sh

lint: bootstrap
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: bootstrap
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The chart and the kustomize base carry copies of crds/ (neither can read outside its own
# directory); tests fail until they are copied again after a CRD change.
sync-crds:
	cp crds/*.yaml helm/jobqueue/crds/
	cp crds/*.yaml manifests/base/crds/

proto: bootstrap
	$(BIN)/python scripts/generate_proto.py

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: bootstrap
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# Needs a running Docker engine; everything else it builds or installs itself.
kind-e2e: bootstrap
	bash scripts/kind-e2e.sh
# Not part of `make test`: it takes minutes and its numbers depend on the machine's load.
bench: bootstrap
	$(BIN)/python -m jobqueue.bench $(BENCH_ARGS)

demo: bootstrap
	$(BIN)/python -m jobqueue.devenv demo

dev-env: bootstrap
	$(BIN)/python -m jobqueue.devenv up

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache *.egg-info
