"""The decode step and the sampler: tokens pinned to the sampler as it was before the fused decode step.

EXPECTED was recorded with the sampler of commit f28d5c5 (separate q/k/v projections, one op per LM
head, CFG / temperature / top-k / Gumbel as separate passes) on this file's peaked tiny model, fp32 on
CPU: any change to the decode step must reproduce these tokens exactly.
"""

import math

import pytest
import torch

from musicgen_cfg.sampler import SamplingConfig, sample

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
