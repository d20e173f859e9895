# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# plain pip (not uv/poetry): it takes torch/torchvision from the machine's local wheel cache when there is one
	# every extra, so the adapter tests (SEA-RAFT, SAM, DPT, diffusers' SVD U-Net, CLIP) run on random weights
	$(PY) -m pip install --quiet -e '.[test,sea-raft,collage,train]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vid2pair demo --output demo_output

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf demo_output .pytest_cache
