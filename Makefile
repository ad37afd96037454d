# BlameTrail: `make up` runs the whole stack on loopback, `make test` runs the whole suite.
# Everything missing (uv, Python deps, Kafka jars, a JDK/Maven, Postgres) is installed on demand.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV := python3 -m uv
RUN := $(UV) run --frozen
PYTEST_RC = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

.PHONY: help setup up down test test-fast faults lint fmt bench clean k8s-validate

help: ## list targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

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
	@echo; echo "BlameTrail web: http://127.0.0.1:8080/  (sign in with .local/demo-credentials)"; \
	  if [ -f .local/demo-credentials ]; then cat .local/demo-credentials; fi

down: ## stop every service, Kafka and Postgres started by `make up`
	-$(RUN) blametrail-devstack services-down
	$(RUN) blametrail-devstack down

test: setup k8s-validate ## the whole suite against a real Kafka broker and Postgres (started once per run)
	$(RUN) pytest; $(PYTEST_RC)

faults: setup ## only the fault suite (tests/faults; part of `make test`): each fault mid-flow, then exact counts
	$(RUN) pytest tests/faults; $(PYTEST_RC)

test-fast: ## the pure core only, no broker or database (seconds)
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --all-packages --quiet
	$(RUN) pytest -m "not integration and not tools" -q; $(PYTEST_RC)

lint: ## ruff (lint + format check), mypy --strict on our packages, the import rules (lint-imports)
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --all-packages --quiet
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy libs/*/src services/*/src
	$(RUN) lint-imports --cache-dir .local/import-linter-cache

fmt: ## apply ruff's fixes and formatting
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: up ## benchmarks (bench/*), each printing ratios against a baseline measured in the same run; one summary table at the end
	@rm -rf .local/bench; failed=""; names=""; \
	for b in bench/*/run.py; do names="$$names $$(basename $$(dirname $$b))"; \
	  $(RUN) python $$b || failed="$$failed $$b"; done; \
	$(RUN) python -m blametrail_devstack.bench summary $$names; rc=$$?; \
	if [ -n "$$failed" ]; then echo "failed:$$failed" >&2; exit 1; fi; exit $$rc

clean: down ## stop the stack and delete .local (jars, clusters, logs) and caches
	rm -rf .local .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis

K8S_BIN := .local/bin
K8S_SCHEMAS := .local/k8s-schemas
K8S_VERSIONS := 1.30.0 1.33.0
K8S_RULES := .local/prometheus/blametrail-rules.yaml
GO := $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
k8s-validate: ## build each kustomize overlay; validate every object (Kubernetes, Strimzi, CloudNativePG, Prometheus Operator schemas); promtool on the alerting rules
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --all-packages --quiet
	@test -x $(K8S_BIN)/kustomize || GOBIN=$(CURDIR)/$(K8S_BIN) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
	@test -x $(K8S_BIN)/kubeconform || GOBIN=$(CURDIR)/$(K8S_BIN) $(GO) install github.com/yannh/kubeconform/cmd/kubeconform@v0.6.7
	@# promtool from Debian's prometheus package, unpacked (not installed: no server, no service);
	@# building it from the Go module proxy took 12 minutes on these machines
	@test -x $(K8S_BIN)/promtool || { d=$$(mktemp -d) && (cd $$d && apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }) \
	  && dpkg-deb -x $$d/prometheus_*.deb $$d/x && mkdir -p $(K8S_BIN) && cp $$d/x/usr/bin/promtool $(K8S_BIN)/ && rm -rf $$d; }
	$(RUN) blametrail k8s topics --check
	$(RUN) python deploy/k8s/schemas/prepare.py $(K8S_SCHEMAS) $(K8S_VERSIONS)
	@set -euo pipefail; for v in $(K8S_VERSIONS); do for o in deploy/k8s/overlays/*/; do \
	  echo "kubeconform: $$o against Kubernetes $$v"; \
	  $(K8S_BIN)/kustomize build $$o | $(K8S_BIN)/kubeconform -strict -summary -kubernetes-version $$v \
	    -schema-location '$(K8S_SCHEMAS)/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json' \
	    -schema-location '$(K8S_SCHEMAS)/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json' -; \
	done; done
	$(RUN) python tests/deploy/metric_names.py rules $(K8S_RULES)
	$(K8S_BIN)/promtool check rules $(K8S_RULES)
	$(K8S_BIN)/promtool test rules deploy/k8s/alerts-test.yaml
