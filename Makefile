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

.PHONY: setup demo train test test-fast lint format serve stop build-engines bench k8s-render clean dali-backend

setup: $(STAMP)

$(STAMP): requirements.txt
	@command -v apt-get >/dev/null && ! dpkg -s libb64-0d >/dev/null 2>&1 && \
	  { echo "setup: installing libb64-0d (perf_analyzer needs it)"; \
	    (apt-get update -qq && apt-get install -y -qq libb64-0d) >/dev/null || \
	    echo "setup: could not install libb64-0d; perf_analyzer will not run"; } || true
	@test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

# The whole story on the CPU: synthetic motion videos -> tiny TimeSformer -> cpu repository -> Triton ->
# held-out videos classified over gRPC and HTTP. The server is stopped on success and on failure (trap).
# PRECISION=int8 serves the int8 graph, calibrated on the whole training list: 450 videos fit the ranges,
# 150 held out check agreement with fp32 (make demo PRECISION=int8).
PRECISION ?= fp32
DEMO_DATA := data/synthetic
DEMO_RUN := runs/synthetic_tiny
DEMO_REPO := model_repository_demo
DEMO_STATE := runs/demo_triton

demo: setup
	@set -euo pipefail; \
	trap '$(PY) -m triton_models.server stop --state-dir $(DEMO_STATE) >/dev/null 2>&1 || true' EXIT; \
	if [ -f $(DEMO_DATA)/val.list ]; then echo "demo: $(DEMO_DATA) exists (make clean to regenerate)"; \
	else $(PY) -m training.synth --out $(DEMO_DATA) --demo; fi; \
	if [ -f $(DEMO_RUN)/best.pt ]; then echo "demo: $(DEMO_RUN)/best.pt exists (make clean to retrain)"; \
	else $(PY) -m training.train -c training/configs/synthetic_tiny.yaml \
	  -o output_dir=$(DEMO_RUN) -o data.root=$(DEMO_DATA); fi; \
	$(PY) -m build_engines.build --checkpoint $(DEMO_RUN)/best.pt --target cpu -o $(DEMO_REPO) \
	  --precision $(PRECISION) $(if $(filter int8,$(PRECISION)),--calibration $(DEMO_DATA)/train.list --calibration-size 600); \
	$(PY) -m triton_models.server stop --state-dir $(DEMO_STATE) >/dev/null; \
	$(PY) -m triton_models.server start --repository $(DEMO_REPO) --state-dir $(DEMO_STATE); \
	$(PY) -m clients.demo --data $(DEMO_DATA) --state-dir $(DEMO_STATE)

# Train a recipe (default: the CPU demo's, on data/synthetic, made when missing); NPROC>1 runs torchrun
# (gloo on CPUs, NCCL on GPUs): make train [CONFIG=training/configs/....yaml] [NPROC=N] [TRAIN_ARGS="-o k=v"]
CONFIG ?= training/configs/synthetic_tiny.yaml
NPROC ?= 1
train: setup
	@if [ "$(CONFIG)" = training/configs/synthetic_tiny.yaml ] && [ ! -f data/synthetic/val.list ]; then \
	  $(PY) -m training.synth --out data/synthetic --demo; fi
	@if [ "$(NPROC)" -gt 1 ]; then \
	  $(PY) -m torch.distributed.run --standalone --nproc_per_node $(NPROC) -m training.train -c $(CONFIG) $(TRAIN_ARGS); \
	else $(PY) -m training.train -c $(CONFIG) $(TRAIN_ARGS); fi

# Triton model repository from a native checkpoint: make build-engines CHECKPOINT=... TARGET=cpu|gpu
# (BUILD_ARGS for more: --max-batch-size N --precision fp16 --instances N --max-queue-delay-us N ...).
build-engines: setup
	$(PY) -m build_engines.build --checkpoint $(CHECKPOINT) --target $(TARGET) -o $(REPO) $(BUILD_ARGS)

# Start tritonserver (from the nvidia-pytriton wheel) in the background on $(HOST) (loopback unless given);
# returns once ready. Pid, endpoints and log: runs/triton/. Stop with make stop.
HOST ?= 127.0.0.1
serve: setup
	$(PY) -m triton_models.server start --repository $(REPO) --host $(HOST) \
	  --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

stop:
	@$(PY) -m triton_models.server stop

# Triton's dali backend built CPU-only from pinned upstream sources (a git clone of each, or
# DALI_BACKEND_SOURCES=DIR holding their source archives), patched, cached by the hash of its inputs: the
# gpu target's DALI model is then served for real by `make serve` and the tests. Debian build tools first.
DALI_BACKEND_DEBS := cmake make g++ git rapidjson-dev
dali-backend: setup
	@missing=$$(for p in $(DALI_BACKEND_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null; then \
	  echo "dali-backend: installing" $$missing; \
	  (apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null || \
	    echo "dali-backend: could not install $$missing"; fi
	$(PY) -m build_engines.dali_backend $(if $(DALI_BACKEND_SOURCES),--sources $(DALI_BACKEND_SOURCES))

test: setup dali-backend
	$(PY) -m pytest -q

test-fast: setup dali-backend
	$(PY) -m pytest -q -m "not slow"

# Triton vs in-process vs naive on real videos -> benchmarks/results/<timestamp>/report.md.
# QUICK=1: tiny model, short sweep (< 10 min on 2 cores). BENCH_ARGS: e.g. "--model base", "--soak 10".
# PRECISION=int8: the suite on the int8 repository (BENCH_ARGS="--calibration LIST" for static ranges).
bench: setup
	$(PY) -m benchmarks.run $(if $(QUICK),--quick) --precision $(PRECISION) $(BENCH_ARGS)

# Render the Kubernetes deployment of a target (kubectl's built-in Kustomize; no cluster needed).
k8s-render:
	kubectl kustomize deploy/kubernetes/overlays/$(TARGET)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf runs data model_repository model_repository_demo build
