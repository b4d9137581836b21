# The two commands that matter: `make run` and `make test` (both set everything up).
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: setup run test lint typecheck bench wasm clean

setup:
	tools/setup

run: setup
	$(PY) tools/standin-images
	$(VENV)/bin/hypermachine serve --host $(HOST) --port $(PORT)

# Two workers, each test file in one of them (its module fixtures start once): the
# suite's guests run under TCG, and one file's waits overlap another's work.
test: setup lint typecheck
	$(PY) -m pytest -q -n 2 --dist loadfile

lint:
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/ruff format --check src tests bench

typecheck:
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/run.py

wasm:
	tools/build-rhai-wasm

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
