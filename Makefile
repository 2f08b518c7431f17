# Developer entry points. Everything runs from the project virtualenv in .venv, which is
# (re)built whenever pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
# Marks a completed install; newer than pyproject.toml means the venv is up to date.
VENV_STAMP := $(VENV)/.installed
PG15_BINDIR ?= /usr/lib/postgresql/15/bin
PYTEST_ARGS ?=

.DEFAULT_GOAL := test
.PHONY: $(VENV) test test-faults test-pg15 demo bench lint clean

$(VENV): $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

## test: ruff, then the whole pytest suite (pass options with PYTEST_ARGS="-k foo -x")
test: $(VENV)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

## test-faults: the whole fault-injection suite, slow scenarios included (tests/faults/README.md)
test-faults: $(VENV)
	$(VENV)/bin/python -m pytest tests/faults -s $(PYTEST_ARGS)

## test-pg15: the SQL tests again, on a Debian PostgreSQL 15 cluster instead of the embedded 18.
## pytest exits 5 when it collects no test: no `sql` test yet is not a failure here.
test-pg15: $(VENV)
	@echo "COURSEGEN_TEST_PG_BINDIR=$(PG15_BINDIR) $(VENV)/bin/python -m pytest -m sql $(PYTEST_ARGS)"
	@COURSEGEN_TEST_PG_BINDIR=$(PG15_BINDIR) $(VENV)/bin/python -m pytest -m sql $(PYTEST_ARGS); \
	status=$$?; \
	if [ $$status -eq 5 ]; then echo "test-pg15: no test is marked 'sql'; nothing to run"; exit 0; fi; \
	exit $$status

## demo: embedded Redis + PostgreSQL, a worker and a producer (`coursegen dev`)
demo: $(VENV)
	$(VENV)/bin/coursegen dev

## bench: status sync on vs off through the real dramatiq CLI (see benchmarks/README.md)
BENCH_ARGS ?=
bench: $(VENV)
	$(VENV)/bin/python -m benchmarks.throughput $(BENCH_ARGS)

lint: $(VENV)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .coursegen
