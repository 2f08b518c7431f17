# Developer entry points. Everything runs from the project virtualenv in .venv, which is
# (re)built whenever pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
# Marks a completed install; newer than pyproject.toml means the venv is up to date.
VENV_STAMP := $(VENV)/.installed
PG15_BINDIR ?= /usr/lib/postgresql/15/bin
PYTEST_ARGS ?=
# Each run gets its own temporary root, removed afterwards: PostgreSQL clusters live there, and
# pytest's shared /tmp/pytest-of-<user> is 0700 and pruned by whichever session runs next.
run_pytest = tmp=$$(mktemp -d /tmp/coursegen-test-XXXXXX) && chmod 755 $$tmp; \
	$(VENV)/bin/python -m pytest --basetemp=$$tmp/base $(1); status=$$?; rm -rf $$tmp; exit $$status

.DEFAULT_GOAL := test
.PHONY: $(VENV) test test-faults test-pg15 demo bench bench-fleet lint clean

$(VENV): $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

## test: ruff, then the whole pytest suite (pass options with PYTEST_ARGS="-k foo -x")
test: $(VENV)
	$(VENV)/bin/ruff check .
	$(call run_pytest,-m "not slow" $(PYTEST_ARGS))

## test-faults: the whole fault-injection suite, slow scenarios included (tests/faults/README.md)
test-faults: $(VENV)
	$(call run_pytest,tests/faults -s $(PYTEST_ARGS))

## test-pg15: the SQL tests again, on a Debian PostgreSQL 15 cluster instead of the embedded 18
## (the slow ones too: a real pg_cron run of the retention schedule).
test-pg15: $(VENV)
	export COURSEGEN_TEST_PG_BINDIR=$(PG15_BINDIR); $(call run_pytest,-m sql $(PYTEST_ARGS))

## demo: embedded Redis + PostgreSQL, a worker and a producer (`coursegen dev`)
demo: $(VENV)
	$(VENV)/bin/coursegen dev

## bench: status sync on vs off through the real dramatiq CLI (see benchmarks/README.md)
BENCH_ARGS ?=
bench: $(VENV)
	$(VENV)/bin/python -m benchmarks.throughput $(BENCH_ARGS)

## bench-fleet: K status writer processes on one database, direct, through PgBouncer and through
## the REST API, fixed and adaptive batching (see benchmarks/README.md; about 25 minutes)
FLEET_ARGS ?=
bench-fleet: $(VENV)
	$(VENV)/bin/python -m benchmarks.fleet --out .coursegen/bench-fleet.json $(FLEET_ARGS)

lint: $(VENV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .coursegen
