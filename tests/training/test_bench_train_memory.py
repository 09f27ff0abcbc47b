"""bench/train_memory.py's formula: parameter counts, the terms' scaling, and the static, KV-cache and fused-copy
terms against the tensors of a real Distiller on a tiny checkpoint (the benchmark checks the rest on CPU)."""

from dataclasses import replace

import pytest
import torch
from accelerate import Accelerator

from bench.train_memory import SHAPES, Run, Shape, decoder_parameters, estimate, lora_parameters
from musicgen_cfg.training.distillation import DistillConfig, Distiller


def test_decoder_parameters_match_the_published_sizes():
    # the decoder sizes quoted for facebook/musicgen-small / medium / large
    counts = {name: decoder_parameters(shape) for name, shape in SHAPES.items()}
    assert counts["small"] == pytest.approx(420e6, rel=0.01)
    assert counts["medium"] == pytest.approx(1.84e9, rel=0.01)
    assert counts["large"] == pytest.approx(3.26e9, rel=0.01)


def test_formula_terms_scale_as_stated():
    shape, n = SHAPES["small"], decoder_parameters(SHAPES["small"])
    run = Run(rows=128, micro_rows=64, rollout_rows=32, frames=500, beta_positive=True, checkpointing=True,
              teacher_bytes=2)
    base = estimate(shape, run, n, towers=0)
    assert base["student"] == 16 * n and base["teacher"] == 2 * n
    assert estimate(shape, replace(run, rollout_rows=64), n, 0)["kv_cache"] == 2 * base["kv_cache"]
    full = estimate(shape, replace(run, checkpointing=False), n, 0)
    assert full["activations"] > 8 * base["activations"]  # 24 layers: checkpointing keeps ~1/8 of the bytes
    lora = estimate(shape, replace(run, lora=True), n, 0)
    assert lora["teacher"] == 0 and lora["student"] == 4 * n + 16 * lora_parameters(shape)
    assert base["peak"] == base["static"] + max(base["rollout"], base["scoring"], base["optimizer"])
    half = estimate(shape, replace(run, micro_rows=32), n, 0)
    assert half["scoring"] == pytest.approx(base["scoring"] / 2, rel=0.05)  # per-row terms dominate


def test_static_kv_cache_and_fused_copy_terms_are_the_tensors_of_a_real_distiller(tiny_dir, tmp_path):
    from musicgen_cfg.lm import KVCache

    (tmp_path / "prompts.txt").write_text("sad piano\na joyful jig\n")
    config = DistillConfig(model=str(tiny_dir), prompts=str(tmp_path / "prompts.txt"), embedder="none",
                           num_frames=8, prompts_per_step=2, generations=2, teacher_dtype="bfloat16",
                           out=str(tmp_path / "run"), tensorboard=False, threads=1)
    distiller = Distiller(config, Accelerator(cpu=True))
    distiller.train_step(0)
    distiller.accumulate_gradients(1)
    lm = distiller.student.lm
    lm_config = lm.config
    shape = Shape("tiny", lm_config.hidden_size, lm_config.num_hidden_layers, lm_config.num_attention_heads,
                  lm_config.ffn_dim, lm_config.num_codebooks, lm_config.vocab_size, lm.text_hidden_size)
    n = sum(p.numel() for p in lm.parameters())
    assert n == decoder_parameters(shape)
    run = Run.of(config)
    cond = distiller.student.condition(["sad piano"] * run.rollout_rows)
    formula = estimate(shape, replace(run, text_tokens=cond.hidden.shape[1]), n, towers=0)

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    state = [v for s in distiller.optimizer.state.values() for v in s.values() if v.dim() > 0]
    assert nbytes(lm.parameters()) + nbytes(p.grad for p in lm.parameters()) + nbytes(state) == formula["student"]
    assert nbytes(distiller.teacher.lm.parameters()) == formula["teacher"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = KVCache(lm, cond, run.frames + shape.codebooks - 1)
    assert nbytes([*cache.keys, *cache.values, *(t for kv in cache.cross for t in kv)]) == formula["kv_cache"]
    # the sampler's per-request fused weights (bf16 q/k/v and heads, fp32 embedding tables): the rollout's other term
    assert nbytes([cache.embed_table, *cache.qkv, cache.heads]) == formula["fused_copies"] > 0
    assert formula["rollout"] == formula["kv_cache"] + formula["fused_copies"]


def test_the_lora_measurement_trains_the_adapters_the_formula_counts(tiny_dir, tmp_path):
    # bench/train_memory.py --lora (make gpu-check's medium and large shapes) adds LORA_OVERRIDES to the config
    from bench.train_memory import LORA_OVERRIDES
    from musicgen_cfg.config import load_config

    (tmp_path / "prompts.txt").write_text("sad piano\n")
    config = load_config(DistillConfig, None, ["--model", str(tiny_dir), "--prompts", str(tmp_path / "prompts.txt"),
                                               "--embedder", "none", "--out", str(tmp_path / "run"),
                                               "--tensorboard", "false", *LORA_OVERRIDES])
    distiller = Distiller(config, Accelerator(cpu=True))
    c = distiller.student.lm.config
    shape = Shape("tiny", c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.ffn_dim)
    trained = sum(p.numel() for p in distiller.student.lm.parameters() if p.requires_grad)
    assert trained == lora_parameters(shape)
