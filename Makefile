# Tradewind developer entry points. `make test` and `make run` build their own .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck contracts pytest fmt venv clean protos bench bench-full \
	bench-airflow

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/tradewind standalone

test: $(STAMP)
	$(MAKE) --no-print-directory lint typecheck contracts pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

protos: $(STAMP)
	$(BIN)/python -m tradewind_proto.generate

# The issue-8 reference figures: 2 schedulers, 2 workers, quick profile (a few minutes).
bench: $(STAMP)
	$(BIN)/python -m loadtest run chain --profile quick --workers 2
	$(BIN)/python -m loadtest run fanout --profile quick --workers 2
	$(BIN)/python -m loadtest run chain --profile quick --workers 2 --size 60 --py-spy

# Every scenario at full size (9-15 minutes on 2 cores); figures in docs/performance.md.
bench-full: $(STAMP)
	set -e; for s in chain tree fanout cron worker-loss partition; do \
	  $(BIN)/python -m loadtest run $$s --profile full --workers 2; done
	$(BIN)/python -m loadtest run failover --profile full --workers 2 --restart

# The same chain on Apache Airflow 2.11 (LocalExecutor, default settings), side by side. Airflow
# gets its own environment: it pins SQLAlchemy 1.4. PyPI's newest compatible dependencies are
# used (Airflow's constraint files live on GitHub).
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_VERSION ?= 2.11.0

$(AIRFLOW_VENV)/.installed:
	@test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet 'apache-airflow[postgres]==$(AIRFLOW_VERSION)'
	@touch $@

bench-airflow: $(STAMP) $(AIRFLOW_VENV)/.installed
	$(BIN)/python -m loadtest airflow chain --profile quick --airflow-python $(AIRFLOW_VENV)/bin/python
	$(BIN)/python -m loadtest run chain --profile quick --workers 2

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) .mypy_cache .ruff_cache .pytest_cache
