# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, start a daemon in the foreground on defaults
#   make test   create .venv with the test extras, run ruff, mypy and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint unit integration netns bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kachery-p2p-start-daemon $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check kachery_p2p tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest tests $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/sim $(PYTEST_ARGS)

integration: $(STAMP)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

netns: $(STAMP)
	$(BIN)/pytest tests/netns $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Long mutation fuzzing of every network decoder (tests/fuzz/run.py --help); counts per decoder.
FUZZ_ARGS ?= --count 1000000 --seconds 120
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run.py $(FUZZ_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
