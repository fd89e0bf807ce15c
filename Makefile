# One entry point for every project command. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
UV_VERSION := 0.13.9
export PYTHONPATH := $(CURDIR)
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: install sysdeps lock demo demo-reset test lint validate register bench ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# mysqlclient (required by the MySQL provider) compiles against the MariaDB client headers.
sysdeps:
	@pkg-config --exists libmariadb || pkg-config --exists mysqlclient || \
	  ( [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq libmariadb-dev pkg-config ) || \
	  ( echo "error: MariaDB client headers are missing: install libmariadb-dev (Debian) first" >&2; exit 1 )

$(VENV)/.installed: requirements.lock | $(BIN)/python sysdeps
	$(UV) pip sync --python $(BIN)/python requirements.lock
	touch $@

install: $(VENV)/.installed

# Regenerate the fully resolved lock from the pinned direct dependencies.
lock: | $(BIN)/python
	$(UV) pip compile --python-version 3.11 requirements.txt requirements-dev.txt -o requirements.lock

validate: install
	$(BIN)/python -m include.retention validate

register: install
	$(BIN)/python -m include.retention register --out build/register

# The main job: validate, render the register, seed the demo systems, then start Airflow (API
# server, scheduler, DAG processor, triggerer; LocalExecutor), trigger all 27 DAGs through the
# REST API, wait, print the table, and stop Airflow again.
demo: install
	$(BIN)/python -m include.retention validate
	$(BIN)/python -m include.retention register --out build/register
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m include.demo.run

demo-reset: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m include.demo.run --reset

# The Airflow UI on the embedded default (after `make demo`): http://127.0.0.1:8080 (loopback only)
ui: install
	@test -f var/demo.env || { echo "run 'make demo' first: it seeds the demo systems" >&2; exit 1; }
	. var/demo.env && PATH="$(CURDIR)/$(BIN):$$PATH" && $(BIN)/airflow db migrate >/dev/null \
	  && $(BIN)/python -m include.retention setup && $(BIN)/python -m include.retention check \
	  && AIRFLOW__API__HOST=127.0.0.1 $(BIN)/airflow standalone

bench: install
	$(BIN)/python bench/bench_sql_delete.py

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy include
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy include

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache
