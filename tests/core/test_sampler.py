"""Delay pattern, sampling filters, seeds and the generation config checks."""

import pytest
import torch

from musicgen_cfg import sampler
from musicgen_cfg.delay import (
    build_delay_pattern,
    revert_delay_pattern,
    teacher_forcing_inputs,
    valid_step_mask,
)
from musicgen_cfg.errors import UserError
from musicgen_cfg.sampler import SamplingConfig, filter_logits, sample, uniform_from_bits, uniform_noise


def test_delay_pattern_round_trip_and_layout():
    codes = torch.arange(2 * 4 * 6).view(2, 4, 6)
    delayed = build_delay_pattern(codes, pad_id=-1)
    assert delayed.shape == (2, 4, 9)
    assert torch.equal(revert_delay_pattern(delayed), codes)
    assert delayed[0, 2, :2].tolist() == [-1, -1] and delayed[0, 2, 2] == codes[0, 2, 0]
    assert torch.equal(valid_step_mask(6, 4), delayed[0] != -1)
    inputs = teacher_forcing_inputs(codes, pad_id=-1)
    assert (inputs[:, :, 0] == -1).all() and torch.equal(inputs[:, :, 1:], delayed[:, :, :-1])


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[True, True, False, False]]
    # top-p 0.7: 0.5 alone is below 0.7, so the token crossing the threshold (0.3) is kept too
    assert torch.isfinite(filter_logits(logits, None, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, None, 0.5)).tolist() == [[True, False, False, False]]


def test_uniform_noise_is_uniform_and_seeded():
    u = uniform_noise(torch.tensor([1, 2]), torch.tensor([3]), 4, 5000)
    assert u.shape == (2, 4, 5000) and (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert torch.equal(u[0], uniform_noise(torch.tensor([1]), torch.tensor([3]), 4, 5000)[0])
    assert not torch.equal(u[0], u[1])


def test_uniform_from_extreme_bits_is_strictly_inside_and_gumbel_finite():
    bits = torch.cat([torch.arange(0, 1 << 12), torch.arange((1 << 32) - (1 << 12), 1 << 32)])  # both ends
    u = uniform_from_bits(bits)
    assert u.dtype == torch.float32 and (u > 0).all() and (u < 1).all()
    assert torch.isfinite(-torch.log(-torch.log(u))).all()
    assert u[-1] == 1.0 - 2.0**-24 and u[-(1 << 8) - 1] < u[-1]  # only the top value is clamped
    assert torch.equal(u[:-(1 << 8)], ((bits[:-(1 << 8)] >> 8).float() + 0.5) / float(1 << 24))


@pytest.mark.parametrize("top_k, top_p", [(2, 1.0), (None, 1.0), (2, 0.9)])
def test_pad_id_is_never_sampled_even_at_the_extreme_noise(monkeypatch, top_k, top_p):
    """All noise at its largest value (the old +inf case): every filtered path still picks a real token."""
    vocab = 8
    monkeypatch.setattr(sampler, "uniform_noise_at",
                        lambda rows, cells: uniform_from_bits(torch.full(cells.shape, (1 << 32) - 1)))
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.05, 0.03, 0.01, 0.005, 0.005])).expand(3, 4, vocab)
    tokens = sampler.pick_tokens(logits, SamplingConfig(top_k=top_k, top_p=top_p), torch.tensor([0, 1, 2]),
                                 torch.tensor([5]))
    assert tokens.shape == (3, 4) and (tokens >= 0).all() and (tokens < vocab).all()
    assert (tokens == 0).all()  # equal noise everywhere: the most likely token wins


def test_sampling_matches_softmax_frequencies(tiny_model):
    """Gumbel-max over many seeds draws tokens with the model's first-step probabilities."""
    lm, cond = tiny_model.lm, tiny_model.condition(["sad piano"])
    seeds = list(range(3000))
    codes = sample(lm, cond.repeat_interleave(len(seeds)), 1, SamplingConfig(top_k=None), seeds)
    from musicgen_cfg.scoring import score

    probs = score(lm, codes[:1], cond).logits[0, 0, 0].softmax(-1)
    freq = torch.bincount(codes[:, 0, 0], minlength=probs.shape[0]).float() / len(seeds)
    assert (freq - probs).abs().max() < 0.04


def test_same_seed_same_codes_independent_of_batch(tiny_model):
    cond = tiny_model.condition(["sad piano", "a joyful jig"])
    config = SamplingConfig(guidance_scale=3.0, top_k=20)
    batch = sample(tiny_model.lm, cond, 30, config, [7, 8])
    alone = sample(tiny_model.lm, cond.select(slice(1, 2)), 30, config, [8])
    assert torch.equal(batch[1:], alone)
    assert torch.equal(sample(tiny_model.lm, cond, 30, config, [7, 8]), batch)
    assert not torch.equal(sample(tiny_model.lm, cond, 30, config, [9, 8])[0], batch[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"guidance_scale": -1.0}, "guidance scale"),
    ({"top_k": -1}, "top-k"),
    ({"guidance_scale": float("inf")}, "finite"),
    ({"temperature": float("nan")}, "finite"),
    ({"top_p": 0.0}, "top-p"),
    ({"top_p": 1.5}, "top-p"),
    ({"temperature": 0.0}, "temperature"),
])
def test_sampling_config_rejects_bad_values(kwargs, message):
    with pytest.raises(UserError, match=message):
        SamplingConfig(**kwargs)
