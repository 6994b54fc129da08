# make run    set up the virtualenv and run the whole pipeline on MNIST
# make test   run the tests (what CI runs)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The local mirror of the datasets when there is one (machines without internet),
# otherwise the official mirrors. Override: make run SOURCE=/path/to/mnist-files
SOURCE ?= $(if $(wildcard ../shared/data/mnist),../shared/data/mnist,official)

.PHONY: setup run test lint benchmark clean

$(BIN)/mlflow: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements-dev.txt
	touch $@

setup: $(BIN)/mlflow

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" mlflow run . --env-manager local -P source=$(SOURCE)

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" python -m pytest

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

clean:
	rm -rf mlruns mlflow.db model data example.json my-image-dockerfile
