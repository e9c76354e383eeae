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

test: install-dev data lint typecheck pytest

# Reproduce every shipped model (minutes each on 2 cores).
train: install-dev data
	$(BIN)/python -m training train-all

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
