# The two commands of the README: `make serve` and `make test`. Everything else is a step of those.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test install install-dev data lint typecheck pytest train clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Runtime only: no torch.
install: $(BIN)/python
	$(BIN)/pip install -q -e .

# Runtime + training (torch CPU wheel) + test tools.
install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[train,dev]'

serve: install
	$(BIN)/python -m service --host $(HOST) --port $(PORT) --models-dir models

data:
	bash scripts/fetch_data.sh

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy service training

pytest:
	$(BIN)/pytest -q

test: install-dev data browser-deps example-deps lint typecheck test-deploy pytest

# Reproduce every shipped model (minutes each on 2 cores).
train: install-dev data
	$(BIN)/python -m training train-all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Deployment checks (docs/deployment.md): hadolint, compose config, promtool, kustomize +
# kubernetes-validate, the KServe SDK, pytest tests/deploy; then builds the image on a private
# dockerd, runs it, classifies, stops it (SIGTERM -> 0) and proves Prometheus scrapes it.
# Needs root on Debian bookworm; installs its tools itself. DEPLOY_CHECK=static skips Docker.
DEPLOY_CHECK ?= all
.PHONY: deploy-check test-deploy
deploy-check: install-dev
	PYTHON=$(abspath $(BIN))/python bash scripts/deploy_check.sh $(DEPLOY_CHECK)

# The same checks as a step of `make test`: `auto` runs them all where it can (root with apt-get, as
# on CI, whose .ci/run sets TEST_DEPLOY_CHECK=all so they never skip there), else says it skips.
TEST_DEPLOY_CHECK ?= auto
test-deploy: install-dev
	PYTHON=$(abspath $(BIN))/python bash scripts/deploy_check.sh $(TEST_DEPLOY_CHECK)

# Headless Chromium for the playground's browser tests: Debian's package, driven by Playwright
# through executable_path (no browser download). Idempotent: nothing to do when it is there.
.PHONY: browser-deps
browser-deps:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    chromium fonts-dejavu-core; }
	@/usr/bin/chromium --version 2>/dev/null  # (its wrapper script is noisy on stderr)

# curl, which runs the README's and docs/' examples against a live server in
# tests/test_doc_examples.py, and h2load (nghttp2-client), the benchmark's gRPC load generator
# (bench/grpcload.py): Debian's packages. Idempotent, as browser-deps.
.PHONY: example-deps
example-deps:
	@command -v curl >/dev/null && command -v h2load >/dev/null || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    curl nghttp2-client; }

# The benchmark (docs/benchmarks.md): ours vs in-process onnxruntime, a naive
# FastAPI handler and the peers (installed into build/bench-venvs on first use), all on loopback.
# Writes bench/results/{results.json,report.md,plot.png}. BENCH_ARGS=--smoke runs in seconds.
BENCH_ARGS ?=
.PHONY: bench
bench: install-dev
	$(BIN)/python -m bench $(BENCH_ARGS)
