# musicgen-cfg: two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel for this project's machines; GPU users install their CUDA torch into .venv first (README).
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint reproduce gpu-recipe clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/musicgen-cfg demo

reproduce: setup
	$(BIN)/musicgen-cfg reproduce --config configs/reproduce.yaml --out results

# GPU session: dataset + stronger base + 2 seeds per beta + reproduce, resumable (docs/gpu.md)
gpu-recipe: setup
	BIN=$(BIN) bash scripts/gpu_recipe.sh

# GPU check: sampler, training memory at 3 shapes, one train step, <= 8 min -> bench/results/gpu_check.json (docs/gpu.md)
.PHONY: gpu-check
gpu-check: setup
	$(BIN)/python bench/gpu_check.py

lint: setup
	$(BIN)/ruff check musicgen_cfg rl merging app tests bench

clean:
	rm -rf $(VENV) .pytest_cache
