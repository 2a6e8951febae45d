# `make demo` and `make test` are all a new machine needs: both run scripts/setup first (idempotent, fast).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(BIN):$(PATH)

.PHONY: setup test lint demo bench image registry sandbox clean

setup:
	@scripts/setup

lint: setup
	$(BIN)/ruff check deployer tests bench
	$(BIN)/ruff format --check deployer tests bench
	$(BIN)/mypy deployer
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

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
	$(BIN)/deployer sandbox --kubeconfig .state/sandbox/kubeconfig --state .state/sandbox/objects

clean:
	rm -rf $(VENV) .tools .state .pytest_cache .mypy_cache .ruff_cache
