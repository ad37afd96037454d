# BlameTrail: `make up` runs the whole stack on loopback, `make test` runs the whole suite.
# Everything missing (uv, Python deps, Kafka jars, a JDK/Maven, Postgres) is installed on demand.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV := python3 -m uv
RUN := $(UV) run --frozen
PYTEST_RC = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

.PHONY: help setup up down test test-fast lint fmt bench clean

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: ## install uv, the locked Python deps and the local stack's prerequisites
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --all-packages
	$(RUN) blametrail-devstack install

up: setup ## start Kafka, Postgres, topics, migrations and every service; writes .local/stack.env
	$(RUN) blametrail-devstack up
	set -a && . .local/stack.env && $(RUN) blametrail topics ensure && $(RUN) blametrail db migrate
	set -a && . .local/stack.env && $(RUN) blametrail-devstack services-up
	set -a && . .local/stack.env && $(RUN) blametrail-devstack demo
	@echo; echo "source .local/stack.env   # to use the stack from this shell"; cat .local/stack.env

down: ## stop every service, Kafka and Postgres started by `make up`
	-$(RUN) blametrail-devstack services-down
	$(RUN) blametrail-devstack down

test: setup ## the whole suite against a real Kafka broker and Postgres (started once per run)
	$(RUN) pytest; $(PYTEST_RC)

test-fast: ## the pure core only, no broker or database (seconds)
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --all-packages --quiet
	$(RUN) pytest -m "not integration" -q; $(PYTEST_RC)

lint: ## ruff (lint + format check) and mypy --strict on our packages
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --all-packages --quiet
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy libs/*/src services/*/src

fmt: ## apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: up ## benchmarks (bench/*), each printing ratios against a baseline measured in the same run
	@if ls bench/*/run.py >/dev/null 2>&1; then for b in bench/*/run.py; do $(RUN) python $$b || exit 1; done; \
	else echo "no benchmarks yet"; fi

clean: down ## stop the stack and delete .local (jars, clusters, logs) and caches
	rm -rf .local .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis
