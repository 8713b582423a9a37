# `make test` and `make demo` work on a fresh machine: they create .venv and install when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REQS   ?= requirements.txt
export OMP_NUM_THREADS ?= 2

.PHONY: install test demo bench clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r $(REQS)
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

# The main distillation job: segmentation of nuclei, teacher -> student, about 15 minutes on 2 CPU cores.
demo: install
	$(BIN)/python tools/demo.py seg --out output/demo

bench: install
	$(BIN)/python bench/overhead.py

clean-venv:
	rm -rf $(VENV)
