"""Our compact LM, scoring, CFG and sampler equal transformers' MusicGen on a tiny random checkpoint."""

import torch
from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

from musicgen_cfg.cfg import Condition, with_null
from musicgen_cfg.delay import revert_delay_pattern, teacher_forcing_inputs
from musicgen_cfg.lm import KVCache
from musicgen_cfg.model import load_model
from musicgen_cfg.sampler import SamplingConfig, sample
from musicgen_cfg.scoring import score

PROMPTS = ["a joyful jig with fiddle", "sad piano"]


def random_codes(model, batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.lm.vocab_size, (batch, model.lm.num_codebooks, frames), generator=g)


def hf_logits(hf, model, codes, prompts, null=False):
    """transformers' forward on the same teacher-forced inputs, realigned to [B, K, T, V]."""
    tokens = model.text_encoder.tokenizer(prompts, padding=True, return_tensors="pt")
    mask = tokens["attention_mask"] * (0 if null else 1)
    inputs = teacher_forcing_inputs(codes, model.lm.pad_id)
    batch, k, length = inputs.shape
    with torch.no_grad():
        encoder_out = hf.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        hidden = encoder_out.last_hidden_state * (0 if null else 1)
        out = hf(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=inputs.reshape(batch * k, length))
    return revert_delay_pattern(out.logits.reshape(batch, k, length, -1))


def test_scoring_logits_equal_transformers_forward(tiny_hf, tiny_model):
    codes = random_codes(tiny_model, 2, 20)
    ours = score(tiny_model.lm, codes, tiny_model.condition(PROMPTS))
    torch.testing.assert_close(ours.logits, hf_logits(tiny_hf, tiny_model, codes, PROMPTS), atol=1e-5, rtol=1e-5)
    assert ours.mask.all() and ours.mask.shape == codes.shape


def test_cfg_logits_equal_transformers_processor(tiny_hf, tiny_model):
    codes, gamma = random_codes(tiny_model, 2, 12, seed=1), 3.0
    ours = score(tiny_model.lm, codes, tiny_model.condition(PROMPTS), guidance_scale=gamma)
    cond = hf_logits(tiny_hf, tiny_model, codes, PROMPTS)
    uncond = hf_logits(tiny_hf, tiny_model, codes, PROMPTS, null=True)
    processor = ClassifierFreeGuidanceLogitsProcessor(gamma)
    vocab = cond.shape[-1]
    flat = torch.cat([cond, uncond]).reshape(-1, vocab)
    dummy_ids = torch.zeros((flat.shape[0] // 2, 1), dtype=torch.long)  # the processor only checks its size
    expected = processor(dummy_ids, flat).reshape(cond.shape)
    torch.testing.assert_close(ours.cfg_logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.logits, cond, atol=1e-5, rtol=1e-5)


def test_batched_cfg_equals_two_passes(tiny_model):
    codes, gamma = random_codes(tiny_model, 2, 10, seed=2), 2.5
    cond = tiny_model.condition(PROMPTS)
    one_pass = score(tiny_model.lm, codes, cond, guidance_scale=gamma)
    conditional = score(tiny_model.lm, codes, cond).logits
    unconditional = score(tiny_model.lm, codes, with_null(cond).select(slice(2, 4))).logits
    torch.testing.assert_close(one_pass.cfg_logits, unconditional + gamma * (conditional - unconditional), atol=1e-5, rtol=1e-5)


def test_guidance_one_is_conditional(tiny_model):
    codes = random_codes(tiny_model, 2, 8, seed=3)
    scores = score(tiny_model.lm, codes, tiny_model.condition(PROMPTS), guidance_scale=1.0)
    torch.testing.assert_close(scores.cfg_logits, scores.logits, atol=0, rtol=0)


def test_greedy_cfg_generation_token_identical_to_transformers(tiny_hf, tiny_model, monkeypatch):
    frames, gamma, k = 101, 3.0, tiny_model.lm.num_codebooks
    captured = {}
    decode = tiny_hf.audio_encoder.decode

    def record_codes(codes, *args, **kwargs):  # generate() hands the final codes [1, B, K, T] to EnCodec
        captured["codes"] = codes[0]
        return decode(codes, *args, **kwargs)

    monkeypatch.setattr(tiny_hf.audio_encoder, "decode", record_codes)
    tokens = tiny_model.text_encoder.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        tiny_hf.generate(**tokens, do_sample=False, guidance_scale=gamma, max_new_tokens=frames + k - 1)
    theirs_codes = captured["codes"]
    ours = sample(tiny_model.lm, tiny_model.condition(PROMPTS), frames, SamplingConfig(guidance_scale=gamma, greedy=True), [0, 1])
    assert ours.shape == (2, k, frames)
    assert torch.equal(ours, theirs_codes)


def test_kv_cache_step_logits_equal_full_recomputation(tiny_model):
    lm, codes = tiny_model.lm, random_codes(tiny_model, 2, 16, seed=4)
    cond = tiny_model.condition(PROMPTS)
    inputs = teacher_forcing_inputs(codes, lm.pad_id)
    with torch.no_grad():
        full = lm(inputs, cond)
        cache = KVCache(lm, cond, inputs.shape[-1])
        steps = [lm.step(inputs[:, :, s], torch.tensor([s]), cache) for s in range(inputs.shape[-1])]
    torch.testing.assert_close(torch.stack(steps, dim=2), full, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_identical_logits(tiny_model, tmp_path):
    codes = random_codes(tiny_model, 2, 10, seed=5)
    cond = tiny_model.condition(PROMPTS)
    before = score(tiny_model.lm, codes, cond).logits
    tiny_model.save(tmp_path / "copy")
    again = load_model(str(tmp_path / "copy"))
    assert torch.equal(score(again.lm, codes, again.condition(PROMPTS)).logits, before)
    assert again.weights_sha256() == tiny_model.weights_sha256()


def test_condition_padding_matches_unpadded(tiny_model):
    """A short prompt batched beside a long one gets the same logits as alone (mask is honoured)."""
    codes = random_codes(tiny_model, 1, 8, seed=6)
    alone = score(tiny_model.lm, codes, tiny_model.condition(["sad piano"])).logits
    padded = tiny_model.condition(["sad piano", "a joyful jig with fiddle and drums in minor"]).select(slice(0, 1))
    torch.testing.assert_close(score(tiny_model.lm, codes, Condition(padded.hidden, padded.mask)).logits, alone,
                               atol=1e-5, rtol=1e-5)
