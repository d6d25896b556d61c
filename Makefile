# Quick start: `make demo` and `make test`. Both create .venv with the Python 3.11+ found as $(PYTHON).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ORCH := $(BIN)/orchestrator --config config/orchestrator.yaml --db sqlite:///demo/orchestrator.db
PG_URL ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.py setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python setup.py setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

DEMO_AT ?= 2026-11-01T10:00:00+08:00
REPORT_AT ?= 2026-11-22T10:00:00+08:00
FOLLOW_UP_AT ?= 2026-11-04T10:00:00+08:00

demo: $(VENV)/.installed
	rm -rf demo && mkdir -p demo
	$(ORCH) init
	$(ORCH) demo-data --preset seed-shop
	$(ORCH) analyze --at $(DEMO_AT) --html demo/members.html
	$(ORCH) validate campaigns/*.yaml campaigns/journeys/*.yaml
	for f in campaigns/*.yaml; do $(ORCH) dry-run $$f --at $(DEMO_AT) --sample 1 || exit 1; done
	for f in campaigns/*.yaml; do $(ORCH) run $$f --at $(DEMO_AT) || exit 1; done
	$(ORCH) demo-data --responses
	$(ORCH) dispatch --at $(FOLLOW_UP_AT)
	$(ORCH) scheduler --campaigns campaigns/journeys --from 2026-09-01 --until 2026-11-01
	$(ORCH) report --at $(REPORT_AT) --csv demo/report.csv
	$(ORCH) report winback-lapsed-diners --at $(REPORT_AT) --html demo/report.html
	$(ORCH) schedule --at $(DEMO_AT)
	$(ORCH) scheduler --from 2026-11-02 --until 2026-11-23 --dry-run
	$(BIN)/python -m orchestrator.demo.serve_walkthrough --config config/orchestrator.yaml --db sqlite:///demo/orchestrator.db
	@echo "demo: database demo/orchestrator.db, messages in demo/outbox/, pages demo/members.html and demo/report.html, service log demo/serve.log"

test: $(VENV)/.installed-test
	$(BIN)/pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/bench_segments.py
	$(BIN)/python benchmarks/bench_import_analyze.py
	$(BIN)/python benchmarks/bench_email.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_end_to_end.py
	$(BIN)/python benchmarks/bench_scheduler_replay.py --sides replay,dry_run
	$(BIN)/python benchmarks/bench_celery.py

clean:
	rm -rf demo benchmarks/output .pytest_cache .ruff_cache
