# musicgen-cfg: two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel for this project's machines; GPU users install their CUDA torch into .venv first (README).
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast test-numerics demo lint reproduce assets gpu-recipe clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Everything, as CI runs it (.ci/run), the tests marked slow included: before a commit.
test: setup
	$(BIN)/python -m pytest -q tests

# The loop while developing: all but the tests marked slow (several processes, workflows end to end, real-format
# training, shipped models, the Gradio server, the browser; pyproject.toml's `slow` marker), <= 90 s on 2 cores.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests

# The tests that compare numbers across code paths (our LM vs transformers, the decode step, LoRA, the real
# distillation path, rewards), rerun under other CPU kernels (AVX2 instead of the best this CPU has) and
# another thread count: a tolerance that only holds for one machine's kernels fails here, not on a new machine.
NUMERICS_TESTS := tests/core/test_lm_equivalence.py tests/core/test_decode_step.py tests/core/test_sampler.py \
	tests/training/test_lora.py tests/training/test_distillation_real.py tests/rl/test_reward.py
test-numerics: setup
	ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -q -p no:cacheprovider $(NUMERICS_TESTS)
	MUSICGEN_CFG_TEST_THREADS=2 OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q -p no:cacheprovider $(NUMERICS_TESTS)

demo: setup
	$(BIN)/musicgen-cfg demo

reproduce: setup
	$(BIN)/musicgen-cfg reproduce --config configs/reproduce.yaml --out results

# Rebuild the shipped theta_q and theta_d (musicgen_cfg/assets/default/quality, diversity) from the shipped base on
# the CPU (about 30 min each): the one named path that writes into the shipped assets (--rebuild-shipped true).
ASSETS := musicgen_cfg/assets/default
assets: setup
	$(BIN)/musicgen-cfg train --config configs/quality.yaml --export $(ASSETS)/quality --rebuild-shipped true
	$(BIN)/musicgen-cfg train --config configs/diversity.yaml --export $(ASSETS)/diversity --rebuild-shipped true

# GPU session: dataset + stronger base + 2 seeds per beta + reproduce, resumable (docs/gpu.md)
gpu-recipe: setup
	BIN=$(BIN) bash scripts/gpu_recipe.sh

# GPU check: sampler, training memory at 3 shapes, one train step, <= 8 min -> bench/results/gpu_check.json (docs/gpu.md)
.PHONY: gpu-check
gpu-check: setup
	$(BIN)/python bench/gpu_check.py

# Real-shape rehearsal on the CPU (issue 22): published MusicGen sizes with random weights, each stage's peak RSS
# next to the memory formula -> bench/results/real_shape.json + .md; not part of `make test` (bench/README.md)
REAL_SHAPE_PRESET ?= large
.PHONY: real-shape
real-shape: setup
	$(BIN)/python bench/real_shape.py --preset $(REAL_SHAPE_PRESET)

lint: setup
	$(BIN)/ruff check musicgen_cfg rl merging app tests bench

clean:
	rm -rf $(VENV) .pytest_cache
