"""The decode step and the sampler: tokens pinned to the sampler as it was before the fused decode step.

EXPECTED was recorded with the sampler of commit f28d5c5 (separate q/k/v projections, one op per LM
head, CFG / temperature / top-k / Gumbel as separate passes) on this file's peaked tiny model, fp32 on
CPU: any change to the decode step must reproduce these tokens exactly.
"""

import copy
import dataclasses
import math
import warnings

import pytest
import torch

from musicgen_cfg import sampler
from musicgen_cfg.delay import teacher_forcing_inputs
from musicgen_cfg.errors import UserError
from musicgen_cfg.lm import KVCache
from musicgen_cfg.sampler import SamplingConfig, filter_logits, sample, uniform_noise

PROMPTS = ["a joyful jig with fiddle", "sad piano"]
SEEDS = [11, 12]
FRAMES = 10
CONFIGS = {
    "plain_top_k": dict(top_k=20),
    "cfg_top_k_temperature": dict(guidance_scale=3.0, top_k=20, temperature=0.7),
    "cfg_top_p": dict(guidance_scale=2.0, top_k=None, top_p=0.9),
    "cfg_all_tokens": dict(guidance_scale=3.0, top_k=None, temperature=1.3),
    "greedy_cfg": dict(guidance_scale=3.0, greedy=True),
}
EXPECTED = {  # codes [2, 4, 10] flattened
    "plain_top_k": [24, 24, 20, 16, 24, 24, 23, 24, 24, 24, 25, 36, 36, 27, 35, 4, 47, 27, 17, 47, 56, 16, 42, 43, 61, 39, 19, 46, 43, 56, 25, 24, 18, 26, 15, 44, 8, 15, 32, 58, 35, 35, 24, 35, 20, 20, 24, 24, 20, 39, 60, 15, 15, 17, 15, 15, 15, 38, 17, 15, 5, 22, 24, 7, 46, 54, 26, 46, 7, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24],
    "cfg_top_k_temperature": [24, 24, 24, 23, 24, 24, 42, 42, 42, 42, 42, 42, 42, 42, 36, 24, 24, 36, 40, 36, 46, 46, 46, 46, 46, 46, 46, 46, 46, 46, 24, 24, 32, 32, 22, 24, 22, 32, 32, 32, 6, 6, 6, 26, 62, 6, 62, 62, 62, 62, 54, 58, 15, 15, 54, 15, 15, 54, 54, 15, 2, 21, 46, 21, 46, 21, 2, 21, 21, 46, 26, 19, 26, 54, 19, 19, 26, 26, 26, 32],
    "cfg_top_p": [24, 24, 24, 24, 23, 42, 42, 42, 24, 42, 42, 42, 42, 36, 53, 36, 46, 33, 47, 47, 46, 46, 27, 43, 46, 7, 56, 46, 46, 46, 25, 24, 32, 24, 33, 9, 32, 27, 32, 27, 6, 62, 55, 26, 62, 62, 62, 62, 62, 6, 55, 15, 15, 15, 15, 15, 15, 54, 15, 15, 46, 21, 24, 46, 46, 2, 2, 46, 46, 46, 26, 24, 50, 54, 24, 19, 19, 24, 24, 19],
    "cfg_all_tokens": [24, 23, 23, 16, 59, 61, 62, 62, 16, 16, 42, 36, 42, 36, 53, 58, 46, 27, 47, 4, 46, 46, 27, 7, 46, 46, 46, 50, 50, 56, 25, 24, 33, 32, 32, 32, 22, 22, 32, 58, 6, 6, 6, 26, 62, 6, 62, 62, 62, 39, 54, 58, 15, 15, 15, 15, 15, 54, 54, 15, 2, 21, 46, 21, 46, 21, 2, 46, 21, 24, 26, 19, 26, 54, 19, 19, 19, 26, 26, 24],
    "greedy_cfg": [24, 24, 24, 23, 24, 24, 42, 42, 42, 23, 42, 42, 42, 42, 36, 24, 36, 40, 36, 24, 46, 46, 46, 46, 46, 29, 50, 46, 38, 46, 24, 24, 32, 22, 32, 22, 32, 32, 22, 22, 6, 6, 6, 26, 6, 42, 62, 42, 62, 62, 54, 54, 43, 15, 15, 15, 15, 15, 15, 15, 2, 21, 27, 46, 46, 46, 46, 46, 46, 46, 26, 26, 26, 17, 26, 17, 17, 17, 17, 19],
}


@pytest.fixture()
def peaked(tiny_model):
    """The tiny checkpoint with its matrices redrawn at std 2/sqrt(fan_in): peaked, input-dependent logits
    (the saved init, std 0.02, gives near-uniform logits that would hide a wrong step)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tiny_model.lm.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / math.sqrt(p.shape[1])))
    return tiny_model


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tokens_identical_to_the_recorded_sampler(peaked, name):
    codes = sample(peaked.lm, peaked.condition(PROMPTS), FRAMES, SamplingConfig(**CONFIGS[name]), SEEDS)
    assert codes.flatten().tolist() == EXPECTED[name]


@pytest.mark.slow  # torch.compile's graph capture
def test_compiled_fixed_shape_step_gives_the_same_tokens(peaked, recwarn):
    """The step torch.compile captures (fixed shapes: whole cache under the future mask, full-size
    noise instead of the CPU top-k path) gives the recorded tokens. Backend "eager" runs Dynamo's
    captured graph without code generation: Inductor takes minutes to compile on a shared CPU."""
    config = SamplingConfig(**CONFIGS["cfg_top_k_temperature"], compile=True, compile_backend="eager")
    codes = sample(peaked.lm, peaked.condition(PROMPTS), FRAMES, config, SEEDS)
    assert not [w for w in recwarn if "torch.compile" in str(w.message)]  # compiled, not the fallback
    assert codes.flatten().tolist() == EXPECTED["cfg_top_k_temperature"]
    # a request of another shape after it: the loop checks only the guards that tell compiled versions apart,
    # which must still pick this shape's version
    eager = dataclasses.replace(config, compile=False)
    one = sample(peaked.lm, peaked.condition(PROMPTS[:1]), FRAMES, config, SEEDS[:1])
    assert torch.equal(one, sample(peaked.lm, peaked.condition(PROMPTS[:1]), FRAMES, eager, SEEDS[:1]))
    assert torch.equal(sample(peaked.lm, peaked.condition(PROMPTS), FRAMES, config, SEEDS), codes)


def test_a_failing_compile_falls_back_to_the_eager_step(peaked, monkeypatch):
    def broken(backend):
        def fail(*args, **kwargs):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(sampler, "compiled_decode_step", broken)
    monkeypatch.setattr(sampler, "_FAILED_BACKENDS", set())
    config = SamplingConfig(**CONFIGS["cfg_top_p"], compile=True)
    with pytest.warns(UserWarning, match="torch.compile of the decoding step failed.*no compiler here"):
        codes = sample(peaked.lm, peaked.condition(PROMPTS), FRAMES, config, SEEDS)
    assert codes.flatten().tolist() == EXPECTED["cfg_top_p"]
    assert sampler._FAILED_BACKENDS == {"inductor"}  # later requests go eager without trying again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(sample(peaked.lm, peaked.condition(PROMPTS), FRAMES, config, SEEDS), codes)


def test_unknown_compile_backend_is_a_user_error():
    with pytest.raises(UserError, match="unknown torch.compile backend 'nope'"):
        SamplingConfig(compile=True, compile_backend="nope")


def test_live_merge_between_two_requests_is_seen(peaked):
    """The step's fused weights (QKV, heads, embedding table) are derived per request, so LiveMerge
    rewriting the parameters in place between two generate calls changes the second one."""
    from merging.live import LiveMerge

    lm, cond, config = peaked.lm, peaked.condition(PROMPTS), SamplingConfig(**CONFIGS["cfg_top_k_temperature"])
    quality = {k: v.clone() for k, v in lm.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    diversity = {k: v + 0.5 * torch.randn(v.shape, generator=g) * v.std() if v.dim() == 2 else v.clone()
                 for k, v in quality.items()}
    merge = LiveMerge(lm, quality, diversity, lam=0.0)
    assert sample(lm, cond, FRAMES, config, SEEDS).flatten().tolist() == EXPECTED["cfg_top_k_temperature"]
    merge.set_lambda(1.0)
    merged = sample(lm, cond, FRAMES, config, SEEDS)
    fresh = copy.deepcopy(lm)
    fresh.load_state_dict(diversity)
    assert torch.equal(merged, sample(fresh, cond, FRAMES, config, SEEDS))
    assert merged.flatten().tolist() != EXPECTED["cfg_top_k_temperature"]


def test_bf16_step_within_tolerance_of_the_fp32_forward(peaked):
    """Under bf16 autocast the cache and the fused weights are bf16 (cast once per request) and the
    step's logits stay within bf16 rounding of the fp32 teacher-forced forward."""
    lm, cond = peaked.lm, peaked.condition(PROMPTS)
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, lm.vocab_size, (2, lm.num_codebooks, 8), generator=g)
    inputs = teacher_forcing_inputs(codes, lm.pad_id)
    with torch.no_grad():
        full = lm(inputs, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cache = KVCache(lm, cond, inputs.shape[-1])
            steps = [lm.step(inputs[:, :, s], torch.tensor([s]), cache) for s in range(inputs.shape[-1])]
    assert cache.kv[0].dtype == cache.qkv[0].dtype == cache.heads.dtype == torch.bfloat16
    step_logits = torch.stack(steps, dim=2).float()
    assert not torch.equal(step_logits, full)  # really computed in bf16
    torch.testing.assert_close(step_logits, full, atol=0.15, rtol=0.05)


@pytest.mark.parametrize("ties", [False, True])
def test_cpu_top_k_fast_path_equals_the_full_size_path(ties):
    """_pick_among_top_k (noise hashed at the k + 1 candidates, the tie check) picks what the
    full-size filter + Gumbel-max picks, with and without ties at the k-th value."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 64, generator=g)
    if ties:  # row 1, codebook 2: the 5 largest share one value, so top-5 keeps 5 and top-4 keeps 5 too
        logits[1, 2, :5] = logits[1, 2].max() + 1
    seeds, step = torch.tensor([4, 5, 6]), torch.tensor([7])
    full = (filter_logits(logits, 4, 1.0) - torch.log(-torch.log(uniform_noise(seeds, step, 4, 64)))).argmax(-1)
    fast = sampler._pick_among_top_k(logits, 4, sampler.row_hashes(seeds, step))
    assert (fast is None) == ties
    assert torch.equal(sampler.pick_tokens(logits, SamplingConfig(top_k=4), seeds, step), full)
    if not ties:
        assert torch.equal(fast, full)


def test_lora_adapters_reach_the_fused_step(peaked):
    """peft wraps q/k/v (and here a head) in LoRA layers whose `.weight` is the base weight alone:
    the fused step must use the adapted map. Same tokens as a model with the adapters merged."""
    peft = pytest.importorskip("peft")
    lm, cond, config = peaked.lm, peaked.condition(PROMPTS), SamplingConfig(**CONFIGS["cfg_top_k_temperature"])
    targets = ["q_proj", "k_proj", "v_proj", "lm_heads.0"]
    wrapped = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets), copy.deepcopy(lm))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (a no-op adapter): make it change the model
                p.copy_(torch.randn(p.shape, generator=g))
    adapted = sample(wrapped, cond, FRAMES, config, SEEDS)
    assert adapted.flatten().tolist() != EXPECTED["cfg_top_k_temperature"]
    merged = copy.deepcopy(lm)
    with torch.no_grad():
        for name, module in wrapped.named_modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                merged.get_submodule(name).weight.copy_(module.get_delta_weight("default") + module.base_layer.weight)
    assert torch.equal(adapted, sample(merged, cond, FRAMES, config, SEEDS))
