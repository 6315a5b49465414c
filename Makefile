# slade: the README's commands. Everything runs from the repository root.
#   make demo   venv + install + local Prefect/MLflow services + deploy + quickstart run
#   make test   venv + install + the test suite
#   make sweep-demo  slade/sweep: the poster's ablation 4 (cluster.k) on birds_offline's
#               validation classes, then its table
#   make stop   stop the services `make demo` started
#   make team   the team stack without Docker (PostgreSQL, S3, Prefect results on S3) + deploy
#   make team-stop
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= quickstart
# make sweep-demo: the sweep's preset, search space (JSON) and held-out training classes
SWEEP_PRESET ?= birds_offline
SWEEP_SPACE ?= {"cluster.k": [100, 200, 300, 400, 500]}
SWEEP_VALIDATION ?= 15
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export SLADE_VENV := $(abspath $(VENV))

.PHONY: install demo sweep-demo services deploy run stop status team team-stop test test-fast lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml; pip finds them locally.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

services: install
	scripts/services.sh up

deploy: services
	source scripts/env.sh && prefect --no-prompt deploy --all

run:
	scripts/demo.sh $(PRESET)

demo: deploy
	scripts/demo.sh $(PRESET)

sweep-demo: deploy
	scripts/sweep.sh $(SWEEP_PRESET) '$(SWEEP_SPACE)' --param validation_classes=$(SWEEP_VALIDATION)

stop:
	scripts/services.sh down

status:
	scripts/services.sh status

team: install
	scripts/team-stack.sh up
	source scripts/team-env.sh && prefect --no-prompt deploy --all

team-stop:
	scripts/team-stack.sh down

test: install
	$(BIN)/pytest -q

test-fast: install
	$(BIN)/pytest -q -m 'not slow'

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
