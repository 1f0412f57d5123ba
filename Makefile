# The two commands a newcomer needs: `make demo` and `make test`. Each creates .venv itself
# (uv installs it, with the sources and constraints of this machine's pip config: see scripts/venv_install.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	$(BIN)/python scripts/venv_install.py -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/jaxstack run demo --preset tiny

# One pytest worker per core (at most 4: each holds its own jax runtime); PYTEST_WORKERS=0 runs serially.
# Tests go to whichever worker is free (--dist load; loadscope measured no faster).
PYTEST_WORKERS ?= auto
PYTEST_ARGS := -q -n $(PYTEST_WORKERS) --maxprocesses=4 --durations=15

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not slow and not gpu and not tpu"

test-all: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS) -m "not gpu and not tpu"

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/data_pipeline.py

lint: $(STAMP)
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check jaxstack experiments benchmarks tests

clean:
	rm -rf $(VENV) runs .pytest_cache
