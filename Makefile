# The two commands a newcomer runs: `make demo` (embedded, no servers) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo up test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,worker]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m seekq demo

up: install
	$(PY) -m seekq up

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy jobs storage api_gateway workers seekq

# Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`);
# .ci/run starts both when they are down.
test: lint
	$(PY) -m pytest -q -ra

bench: install
	$(PY) -m seekq bench
