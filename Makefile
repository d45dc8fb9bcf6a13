# The two commands a newcomer needs: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint unit demo protos protos-check fixtures bench test-board test-android test-repair clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## make test: ruff, then the whole pytest suite (unit + integration with a real agent on loopback).
test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .

## make demo: start an agent on 127.0.0.1, run a short campaign through it, print the report path.
demo: venv
	$(PY) scripts/demo.py

## make protos: regenerate device_agent/_gen from protos/ (a test fails when they drift).
protos: venv
	bash scripts/gen_protos.sh

## make fixtures: retrain and re-export the fixture models (installs the TensorFlow extra into .venv first).
fixtures: venv
	$(PY) -m pip install --quiet -e '.[fixtures]'
	$(PY) scripts/make_fixtures.py

## make test-board: an arm64 board emulated by qemu-user runs the agent; prints x86-vs-arm64 disagreements
## (scripts/emulated_board.sh; needs root or sudo for apt the first time, ~35 s setup, ~40 s run).
test-board: venv
	bash scripts/emulated_board.sh all

## make test-android: a stock arm64 phone emulated (proot + qemu-user over a root holding only what
## `dflare deploy adb` pushed) gets the self-contained runtime through the simulated adbd; runs the `android`
## marker tests (scripts/emulated_android.sh; root or sudo for apt the first time; docs/android.md).
test-android: venv
	bash scripts/emulated_android.sh setup
	$(PY) -m pytest -q -m android tests/integration/test_android_emulated.py

## make test-repair: install the repair extra (TensorFlow; ~1 min from PyPI) and run the `repair` marker
## tests (`dflare repair` on the fixture models; ~1-2 min on 2 cores). `make test` skips them without TensorFlow.
test-repair: venv
	$(PY) -m pip install --quiet -e '.[repair]'
	$(PY) -m pytest -q -m repair

bench: venv
	$(PY) scripts/bench_agent.py
	$(PY) scripts/bench_search.py
	$(PY) scripts/bench_compare.py --write
	$(PY) scripts/bench_scaling.py
	$(PY) scripts/bench_mutations.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
