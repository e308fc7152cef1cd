# garrison: one command each. `make test` and `make demo` create .venv and install
# everything they need on a fresh machine (Python >= 3.11 as python3).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.garrison-installed

.PHONY: test lint demo tour bench reliability format clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "garrison needs Python >= 3.11, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,all]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The reliability suite (tests/reliability): PROFILE=full (default, ~15 min) or ci (~2 min).
PROFILE ?= full
reliability: $(STAMP)
	GARRISON_RELIABILITY=$(PROFILE) $(PY) -m pytest -q -m reliability -o faulthandler_timeout=900 tests/reliability

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy --strict src

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

demo: $(STAMP)
	$(PY) -m garrison.cli demo

tour: $(STAMP)
	$(PY) examples/first_steps.py

# every benchmark in one run, then benchmarks/results/REPORT.md and REPORT.png
# (BENCH_ARGS=--quick: a smoke run, written to REPORT-quick.*)
bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,all,bench]'
	$(PY) benchmarks/report.py --command "make bench$(if $(BENCH_ARGS), BENCH_ARGS=$(BENCH_ARGS))" $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
