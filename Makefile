# Two entry points: `make demo` (the main job on embedded defaults) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck bench train-testmodel clean lock manifests stack

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

# deploy/requirements.lock: every dependency of the image pinned with hashes (Linux x86_64,
# Python 3.11; PyPI's torch==2.14.1, which carries its CUDA libraries).
lock: $(STAMP)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --no-header --annotation-style line \
		-o deploy/requirements.lock
	$(PY) scripts/image_locks.py

# deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yaml.
manifests: $(STAMP)
	$(PY) scripts/prometheusrule.py

# The whole local stack in Docker (deploy/compose.yaml), with random secrets kept in
# deploy/local.env.
stack:
	bash scripts/local-stack-env.sh
	docker compose -f deploy/compose.yaml --env-file deploy/local.env up --build

clean:
	rm -rf .moderation .pytest_cache .mypy_cache .ruff_cache
