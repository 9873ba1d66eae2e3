# Two entry points: `make demo` (the main job on embedded defaults) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck bench train-testmodel clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	bash scripts/ensure-build-deps.sh $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/moderation demo

test: $(STAMP)
	bash scripts/ensure-test-deps.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/scoring.py
	$(PY) bench/pipeline.py
	$(PY) bench/backtest.py

train-testmodel: $(STAMP)
	$(PY) -m moderation.testmodel.train

clean:
	rm -rf .moderation .pytest_cache .mypy_cache .ruff_cache
