# The verbs a user types. Everything runs on the CPU target by default (no GPU, no Docker).
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.stamp-setup

CHECKPOINT ?= runs/synthetic_tiny/best.pt
TARGET ?= cpu
REPO ?= model_repository
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002

.PHONY: setup demo test test-fast lint format serve stop build-engines bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	@command -v apt-get >/dev/null && ! dpkg -s libb64-0d >/dev/null 2>&1 && \
	  { echo "setup: installing libb64-0d (perf_analyzer needs it)"; \
	    (apt-get update -qq && apt-get install -y -qq libb64-0d) >/dev/null || \
	    echo "setup: could not install libb64-0d; perf_analyzer will not run"; } || true
	@test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

demo: setup
	@echo "demo: not built yet (needs the serving pipeline)"; exit 1

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf runs data model_repository build
