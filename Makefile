# `make test` and `make demo` work on a fresh machine: they create .venv and install when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REQS   ?= requirements.txt
export OMP_NUM_THREADS ?= 2

.PHONY: install test demo bench docs clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt requirements-docs.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r $(REQS)
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	# the documentation site's tools (pure Python): `make docs`, and tests/test_docs.py builds the site too
	$(BIN)/python -m pip install -q -r requirements-docs.txt
	# the package itself, editable: `import slim` and the slim-* commands work from any folder
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

# The documentation site (MkDocs, Material theme) into site/; --strict: a broken link or reference fails.
# `$(BIN)/mkdocs serve` shows it at http://127.0.0.1:8000 while you edit docs/.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The main distillation job: segmentation of nuclei, teacher -> student, about 6 minutes on 2 CPU cores.
demo: install
	$(BIN)/python tools/demo.py seg --out output/demo

# Classification + feature matching (MNIST, 100 images per class): teacher, student alone, KD, KD + frozen
# shared head (about 16 minutes on 2 cores).
.PHONY: demo-cls
demo-cls: install
	$(BIN)/python tools/demo.py cls --out output/demo-cls

# Depth distillation (nuclei): a 14-block teacher cut to 7 blocks through a pipeline, against the 7-block
# model alone, distilled directly, and cut at once; mIoU and inference latency (about 19 minutes on 2 cores).
.PHONY: demo-depth
demo-depth: install
	$(BIN)/python tools/demo.py depth --out output/demo-depth

# Detection (nuclei boxes, PaddleDetection's YOLOv3 distillation workflow on a CPU-sized pair): teacher,
# student alone side by side, then the distilled student, VOC mAP@0.5 table and sample predictions (about
# 90 minutes on 2 cores; `python tools/demo.py det --data trees` runs the tree crowns in 13.5).
.PHONY: demo-det
demo-det: install
	$(BIN)/python tools/demo.py det --out output/demo-det

bench: install
	$(BIN)/python bench/overhead.py

clean-venv:
	rm -rf $(VENV)
