# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint typecheck unit system-deps venv bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## Debian packages the tests drive for real (docker-registry, nginx, skopeo, prometheus).
system-deps:
	bash .ci/system-deps

## Starts the sandbox and the daemon against config/sandbox.yaml; see README.
demo: $(STAMP)
	$(PY) -m rotator.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check rotator tests bench
	$(VENV)/bin/ruff format --check rotator tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: system-deps check unit

bench: $(STAMP)
	$(PY) bench/fanout.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
