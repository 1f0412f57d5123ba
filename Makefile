# The two commands a newcomer needs: `make demo` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/jaxstack run demo --preset tiny

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu and not tpu"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not tpu"

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/data_pipeline.py

lint: $(STAMP)
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check jaxstack experiments benchmarks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
