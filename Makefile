# advtrain: `make demo` trains on real CIFAR-10 on the CPU; `make test` runs the suite. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export ADVTRAIN_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install demo test test-fast lint format bench clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m advtrain train +exp=demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check advtrain benchmarks tests scripts
	$(VENV)/bin/ruff format --check advtrain benchmarks tests scripts

format: install
	$(VENV)/bin/ruff format advtrain benchmarks tests scripts
	$(VENV)/bin/ruff check --fix advtrain benchmarks tests scripts

bench: install
	$(PY) -m advtrain bench

clean:
	rm -rf runs outputs multirun .pytest_cache
