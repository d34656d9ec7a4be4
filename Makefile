# gothic: `make test` and `make demo` work on a fresh clone with nothing but Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines take the pinned CPU wheel of torch (any other spec pulls gigabytes of CUDA packages);
# where nvidia-smi exists the default is the regular (CUDA) build. Override: make setup TORCH_SPEC=...
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
# stages run `python ...`: make that the virtual environment's python
RUN    := PATH="$(abspath $(BIN)):$$PATH"

.PHONY: help setup demo repro test lint tensorboard plots chat clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install gothic with its dev tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup  ## run the whole pipeline on the built-in corpus with the CPU demo profile
	$(RUN) dvc repro

repro: setup  ## dvc repro with params.yaml as it is
	$(RUN) dvc repro

test: setup  ## run the test suite
	$(RUN) python -m pytest

lint: setup  ## ruff
	$(BIN)/ruff check gothic stages tests

clean:  ## remove pipeline outputs (keeps .venv and the DVC cache)
	rm -rf data/processed data/tokenizer.json data/bin models samples logs dvclive
