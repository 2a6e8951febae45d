# `make demo` and `make test` are all a new machine needs: both run scripts/setup first (idempotent, fast).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(BIN):$(PATH)

.PHONY: setup test unit conformance lint demo bench image registry sandbox clean

setup:
	@scripts/setup

lint: setup
	$(BIN)/ruff check deployer sandbox tests bench
	$(BIN)/ruff format --check deployer sandbox tests bench
	$(BIN)/mypy deployer sandbox/kube_sandbox
	$(BIN)/lint-imports

# everything: the deployer's tests (unit, integration, e2e on kube-sandbox), then kube-sandbox's own conformance tests
test: lint
	$(BIN)/pytest
	cd sandbox && ../$(BIN)/pytest

# the deployer's unit tests alone: no cluster, no subprocess, seconds
unit: setup
	$(BIN)/pytest tests/unit

# kube-sandbox's conformance tests (sandbox/tests): the API, controllers, data plane and mesh, through real clients
conformance: setup
	cd sandbox && ../$(BIN)/pytest

demo: setup
	@scripts/demo

bench: setup
	$(BIN)/python bench/render.py
	$(BIN)/python bench/start.py
	$(BIN)/python bench/sandbox.py
	$(BIN)/python bench/build.py
	$(BIN)/python bench/canary.py
	$(BIN)/python bench/mesh.py
	$(BIN)/python bench/push.py
	$(BIN)/python bench/deploy.py
	$(BIN)/python bench/concurrency.py

image: setup
	@scripts/image

registry: setup
	$(BIN)/deployer registry --port 5000 --storage .state/registry

sandbox: setup
	$(BIN)/kube-sandbox serve --kubeconfig .state/sandbox/kubeconfig --state .state/sandbox/objects

clean:
	rm -rf $(VENV) .tools .state .pytest_cache .mypy_cache .ruff_cache
