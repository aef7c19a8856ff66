# The two commands a user needs: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv pip install --python $(VENV)/bin/python --quiet

.PHONY: venv demo airflow test test-fast chaos cluster bench lint lock clean

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) -r requirements.txt
	$(UV) --no-deps -e .
	@touch $@

venv: $(VENV)/.installed

## demo: sandboxes + inbox on loopback, a realistic batch of Ajio orders, the DAG(s) on real Airflow, a reconciliation
## (ERP=generic|erpnext|tally picks the ERP sandbox and the adapter; generic by default)
## (CREDIT_NOTES=erp|rms: return credit notes raised by the ERP and uploaded, or by Increff RMS from our report)
ERP ?= generic
CREDIT_NOTES ?= erp
demo: venv
	$(VENV)/bin/python -m omni_erp.demo --erp $(ERP) --credit-notes $(CREDIT_NOTES)

## airflow: Airflow standalone (AIRFLOW_HOME=var/airflow) with the sandboxes, connections, unpaused DAGs and a trickle
## of sandbox orders; prints the UI URL and admin password; Ctrl-C stops everything it started
airflow: venv
	$(VENV)/bin/python -m omni_erp.devtools.standalone

## test: the whole suite (SQLite and a throwaway PostgreSQL cluster, real HTTP servers, dag.test())
test: venv
	$(VENV)/bin/python -m pytest

## test-fast: the inner loop, without dag.test() runs
test-fast: venv
	$(VENV)/bin/python -m pytest -m "not integration"

## chaos: 2,000 orders through all five DAGs while the ERP, Omni, PostgreSQL and task processes fail; exits 1 unless the zeros are zero
chaos: venv
	$(VENV)/bin/python -m omni_erp.chaos

## cluster: the flows on the CeleryExecutor (PostgreSQL, Redis, api-server, scheduler, dag-processor, triggerer, two Celery
## workers); F1 throughput for 1 and 2 workers and 1, 2, 4 shards, a worker SIGKILLed mid-booking, ledger = ERP = Omni
cluster: venv
	$(VENV)/bin/python -m omni_erp.cluster

## bench: throughput and parse-time benchmarks
bench: venv
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }  # inbox load generator
	$(VENV)/bin/python -m benchmarks

## lint: ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade and Airflow's AIR rules)
lint: venv
	$(VENV)/bin/ruff check include dags plugins tests benchmarks

## lock: recompile requirements.txt from requirements.in (exact pins)
lock: venv
	$(VENV)/bin/uv pip compile requirements.in -o requirements.txt --python-version 3.11

clean:
	rm -rf $(VENV) var .pytest_cache
