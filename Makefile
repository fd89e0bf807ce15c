# One entry point for every project command. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
UV_VERSION := 0.13.9
export PYTHONPATH := $(CURDIR)
export AIRFLOW__CORE__LOAD_EXAMPLES := False

.PHONY: install install-runtime install-demo browser lock env demo demo-reset test lint validate register ui bytecode \
        clean bench bench-postgres bench-mariadb bench-s3 bench-partitions

# Three locked sets, each a superset of the one before (same versions):
#   requirements.lock       runtime: what the product imports in Airflow (the Docker image)
#   requirements-demo.lock  + the demo's embedded S3 and fake people
#   requirements-dev.lock   + test and lint tools (the tests seed the demo and run S3)
RUNTIME_LOCK := requirements.lock
DEMO_LOCK    := requirements-demo.lock
DEV_LOCK     := requirements-dev.lock
COMPILE      := $(UV) pip compile --quiet --python-version 3.11 --only-binary :all: \
                --excludes requirements-excludes.txt
# Wheels only: nothing is compiled, so no compiler or -dev package is ever needed. Bytecode is
# written at install: where PYTHONDONTWRITEBYTECODE is set, every process (each Airflow
# component and task) would otherwise compile every module it imports (Airflow + GX: 12 s -> 6 s).
SYNC         := $(UV) pip sync --quiet --only-binary :all: --compile-bytecode --python $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The development set, exactly as locked (packages not in the lock are removed), and the
# browser the browser test drives.
install: browser | $(BIN)/python
	$(SYNC) $(DEV_LOCK)

# The browser test drives Debian's chromium through Playwright; Playwright never downloads a
# browser of its own. Installed with apt-get when missing (as root, else with sudo).
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) is missing: install Debian's chromium" >&2; exit 1; }

# The runtime set alone, exactly (what the Docker image installs).
install-runtime: | $(BIN)/python
	$(SYNC) $(RUNTIME_LOCK)

# The demo set, added to what is there: after `make install` nothing changes.
install-demo: | $(BIN)/python
	$(UV) pip install --quiet --only-binary :all: --no-deps --compile-bytecode --python $(BIN)/python \
	  -r $(DEMO_LOCK)

# Regenerate the three locks from the pinned direct dependencies; each set is constrained
# to the versions of the one below it. Drivers in requirements-excludes.txt are left out.
lock: | $(BIN)/python
	$(COMPILE) requirements.txt -o $(RUNTIME_LOCK)
	$(COMPILE) requirements.txt requirements-demo.txt -c $(RUNTIME_LOCK) -o $(DEMO_LOCK)
	$(COMPILE) requirements.txt requirements-demo.txt requirements-dev.txt -c $(DEMO_LOCK) \
	  -o $(DEV_LOCK)

# Deployment: .env with fresh secrets and connections.env (both 0600, never overwritten).
env:
	python3 deploy/new_env.py

validate: install-demo
	$(BIN)/python -m include.retention validate

register: install-demo
	$(BIN)/python -m include.retention register --out build/register

# The main job: validate, render the register, seed the demo systems, then start Airflow (API
# server, scheduler, DAG processor, triggerer; LocalExecutor), trigger all 27 DAGs through the
# REST API, wait, print the table, and stop Airflow again.
# DB=sqlite (default): SQLite files. DB=postgres: the source systems on PostgreSQL and MariaDB,
# the control DB on PostgreSQL (include/demo/databases.py; servers from RETENTION_DEMO_PG_URL
# and RETENTION_DEMO_MARIADB_URL, default 127.0.0.1:5432 postgres and 127.0.0.1:3306 root).
DB ?= sqlite
demo: install-demo bytecode
	$(BIN)/python -m include.retention validate $(if $(and $(filter sqlite,$(DB)),$(wildcard var/control.db)),--control-db sqlite:///$(CURDIR)/var/control.db)
	$(BIN)/python -m include.retention register --out build/register
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m include.demo.run --db $(DB)

demo-reset: install-demo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m include.demo.run --reset --db $(DB)

# The Airflow UI on the embedded default (after `make demo`): http://127.0.0.1:8080, owner-only
# files; AIRFLOW__API__HOST / AIRFLOW__API__PORT choose another address.
ui: install-demo bytecode
	@test -f var/demo.env || { echo "run 'make demo' first: it seeds the demo systems" >&2; exit 1; }
	umask 077 && . var/demo.env && PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m include.demo.ui

# Benchmarks: each prints ratios against a baseline timed in the same run (README, Figures).
# Sizes: make bench BENCH_ROWS=500000 BENCH_REPEATS=1 BENCH_OBJECTS=10000 BENCH_S3_REPEATS=1
BENCH_ROWS       ?= 2000000
BENCH_REPEATS    ?= 3
BENCH_OBJECTS    ?= 2000
BENCH_S3_REPEATS ?= 1
BENCH_PARTITION_ROWS ?= 1000000
bench: bench-postgres bench-mariadb bench-s3 bench-partitions

bench-postgres: install-demo
	$(BIN)/python bench/bench_sql_delete.py --db postgresql --rows $(BENCH_ROWS) --repeats $(BENCH_REPEATS)

bench-mariadb: install-demo
	$(BIN)/python bench/bench_sql_delete.py --db mariadb --rows $(BENCH_ROWS) --repeats $(BENCH_REPEATS)

bench-s3: install-demo
	$(BIN)/python bench/bench_s3_delete.py --objects $(BENCH_OBJECTS) --repeats $(BENCH_S3_REPEATS)

bench-partitions: install-demo
	$(BIN)/python bench/bench_partitions.py --rows $(BENCH_PARTITION_ROWS) --counts 1 2 4

test: install bytecode
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy include
	$(BIN)/python -m pytest

# The project's own modules, compiled once for the many processes that import them (see SYNC).
# A module edited later is compiled again in memory until the next run of this: never stale.
bytecode: | $(BIN)/python
	$(BIN)/python -m compileall -q include dags plugins

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy include

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache
