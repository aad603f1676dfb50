# Every target creates .venv on first use; a fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench screenshots crds clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/setpoint dev --data-dir .setpoint

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q -n 2

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench

# The dashboard's views as docs/images/*.png, from the browser tests (Debian's chromium).
screenshots: $(VENV)/.installed-test
	SETPOINT_SCREENSHOTS=docs/images $(BIN)/pytest -q tests/ui/test_dashboard.py

# setpoint's own CRDs (src/setpoint/crds/*.yaml) from their classes (src/setpoint/kinds/).
crds: $(VENV)/.installed-run
	$(BIN)/python -m setpoint.kinds

clean:
	rm -rf $(VENV) .setpoint .pytest_cache .mypy_cache .ruff_cache
