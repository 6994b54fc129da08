# make run    set up the virtualenv and run the whole pipeline on MNIST
# make check  the fast tier: the tests that need no training, model server, browser or PostgreSQL
# make test   run the whole suite (what CI runs)
# Both use the newest supported Python on PATH; PYTHON=python3.12 (or a path) chooses one.
# The pinned requirements need 3.11 or newer (numpy 2.4, pandas 3) and at most 3.13 (TensorFlow 2.21).
SUPPORTED_PYTHONS := 3.13 3.12 3.11
VENV := .venv
BIN := $(VENV)/bin
# The local mirror of the datasets when there is one (machines without internet),
# otherwise the official mirrors. Override: make run SOURCE=/path/to/mnist-files
SOURCE ?= $(if $(wildcard ../shared/data/mnist),../shared/data/mnist,official)
# More parameters for `make run`, e.g. make run ARGS='-P epochs=1'
ARGS ?=

# "3.12" for the Python named $(1), empty when it does not run.
version_of = $(shell $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# Each candidate is run, not just looked up: a pyenv shim for a version that is not
# selected is on PATH but fails.
ifndef PYTHON
PYTHON := $(shell for v in $(SUPPORTED_PYTHONS); do \
  python$$v -c '' >/dev/null 2>&1 && { echo python$$v; exit; }; done; echo python3)
endif
PYTHON_VERSION := $(call version_of,$(PYTHON))
VENV_PYTHON_VERSION := $(call version_of,$(BIN)/python)
ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),setup)),)
ifeq ($(filter $(PYTHON_VERSION),$(SUPPORTED_PYTHONS)),)
$(error $(PYTHON) $(if $(PYTHON_VERSION),is Python $(PYTHON_VERSION),does not run here); this project needs Python 3.11, 3.12 or 3.13: install one, or name one: make $(or $(firstword $(MAKECMDGOALS)),setup) PYTHON=/path/to/python3.12)
endif
endif

# The virtualenv is complete once this file exists; its name says which Python made it.
READY := $(VENV)/.ready-python$(PYTHON_VERSION)

.PHONY: setup run check test test-pythons team-server team-server-stop lint clean

$(READY): requirements.txt requirements-dev.txt pyproject.toml
	@if [ -e $(VENV) ] && [ "$(VENV_PYTHON_VERSION)" != "$(PYTHON_VERSION)" ]; then \
	  echo "Rebuilding $(VENV) with $(PYTHON) (Python $(PYTHON_VERSION)): it was made with Python $(or $(VENV_PYTHON_VERSION),that no longer runs)"; \
	  rm -rf $(VENV); \
	fi
	rm -f $(VENV)/.ready-python*
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements-dev.txt
	# The project itself, for its MLflow plugin: the SQLite store created once, under a lock.
	$(BIN)/pip install --no-deps -e .
	touch $@

setup: $(READY)

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" mlflow run . --env-manager local -P source=$(SOURCE) $(ARGS)

# The fast tier, on every change (tests/conftest.py says which tests it leaves out).
check: setup
	@start=$$(date +%s); \
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest -m "not full" -q; status=$$?; \
	echo "make check: $$(( $$(date +%s) - start )) s"; exit $$status

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest

# A team's tracking server: PostgreSQL and `mlflow server` with basic-auth (docs/5-team.md).
# `python team_server.py status` says what runs; --dir, --host, --port or TEAM_SERVER_* change it.
team-server: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python team_server.py start

team-server-stop: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python team_server.py stop

# The install and a tiny `make run` on a second supported Python (a few minutes; CI runs it).
test-pythons: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" TEST_SECOND_PYTHON=1 python -m pytest tests/test_python_versions.py

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

clean:
	rm -rf mlruns mlflow.db mlflow.db.lock model data example.json my-image-dockerfile
