# TaskFlow: `make run` starts the service, `make test` runs the suite. Both set themselves up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
# The first interpreter on this machine that is Python 3.12 or newer (Django 6.1 needs it).
PYTHON ?= $(shell for p in python3.13 python3.14 python3.12 python3 $$HOME/.pyenv/versions/3.1[234]*/bin/python3 /usr/bin/python3.1[234] /usr/local/bin/python3.1[234]; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then echo $$p; break; fi; done)
PORT ?= 8080
TEST_DB_DSN ?= postgres://postgres@127.0.0.1:5432/taskflow

.PHONY: help run test test-sqlite test-postgres lint bench superuser clean

help:
	@echo "make run        start the API and the workers (SQLite unless DB_DSN is set)"
	@echo "make test       lint, then the whole suite on SQLite and on PostgreSQL"
	@echo "make bench      throughput and latency figures on the local PostgreSQL"
	@echo "make superuser  create an admin user"

$(BIN)/.installed: requirements/base.txt requirements/dev.txt
	@test -n "$(PYTHON)" || { echo "No Python 3.12+ found: install python3.13 (see .python-version)." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	touch $@

venv: $(BIN)/.installed

run: $(BIN)/.installed
	PORT=$(PORT) BIN=$(BIN) ./bin/run

superuser: $(BIN)/.installed
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py createsuperuser

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

test-sqlite: $(BIN)/.installed
	DB_DSN=sqlite:///$(CURDIR)/var/taskflow-test.sqlite3 $(BIN)/pytest $(PYTEST_ARGS)

test-postgres: $(BIN)/.installed
	DB_DSN=$(TEST_DB_DSN) $(BIN)/pytest $(PYTEST_ARGS)

test: lint test-sqlite test-postgres

bench: $(BIN)/.installed
	DB_DSN=$${BENCH_DB_DSN:-postgres://postgres@127.0.0.1:5432/taskflow_bench} $(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache staticfiles
