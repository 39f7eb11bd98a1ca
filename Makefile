# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
PORT ?= 8501

.PHONY: install test lint demo demo-data clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(PY) -m pytest -q

# Builds the demo collection and its project, runs discovery, then serves the app.
demo-data: install
	$(VENV)/bin/artminer demo --out $(DEMO_DIR)
	$(VENV)/bin/artminer discover --project $(DEMO_DIR)/artminer.duckdb

demo: demo-data
	$(VENV)/bin/artminer app --project $(DEMO_DIR)/artminer.duckdb --port $(PORT)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache test-artifacts
