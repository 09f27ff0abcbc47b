"""Judges of the default world, the shipped scorer and the gamma sweep. `pytest tests/world/test_judges.py`"""

import json

import numpy as np
import pytest

from musicgen_cfg.checkpoint import file_sha256, read_json
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.gamma_sweep import SweepConfig, choose_prompts, run_sweep
from musicgen_cfg.world import symbolic
from musicgen_cfg.world.captions import key_name
from musicgen_cfg.world.corpus import load_dataset
from musicgen_cfg.world.judges import DefaultWorldJudges, frechet_distance, prompt_attributes
from musicgen_cfg.world.text_judge import MAX_SIZE_BYTES, ContrastiveScorer
from musicgen_cfg.world.text_judge_options import DEFAULT_DIR

NONE_FIELDS = dict.fromkeys(("style", "form", "tonic", "mode", "meter", "texture", "tempo_word", "tempo_bpm"))
TRIADS = {"major": [(0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7)],  # I IV V I
          "minor": [(0, 3, 7), (5, 8, 12), (7, 11, 14), (0, 3, 7)]}  # i iv V i (raised leading tone)


@pytest.fixture(scope="module")
def judges():
    return DefaultWorldJudges()


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("test")


def cadence(tonic: int, mode: str) -> np.ndarray:
    """codes [4, 128]: the key's I-IV-V-I, arpeggiated in 8ths in the soprano over held bass roots."""
    events = []
    for bar, chord in enumerate(TRIADS[mode]):
        for step in range(16):
            events.append(symbolic.NoteEvent(0, 32 * bar + 2 * step, 2, 60 + tonic + chord[step % 3]))
        events.append(symbolic.NoteEvent(3, 32 * bar, 32, 36 + tonic + chord[0]))
    return symbolic.notes_to_codes(events, 128)


@pytest.mark.parametrize("prompt", ["", "   ", "qwerty zxcv plonk", "lorem ipsum dolor " * 20_000,
                                    "🎻 ünïcödé ♩ = ?", None, 42, "a major hit, 99/3 of the time"])
def test_odd_prompts_give_none_fields(prompt):
    assert prompt_attributes(prompt) == NONE_FIELDS


def test_prompt_attributes_read_back_what_captions_say(test_split):
    import random

    rng = random.Random(0)
    for i in range(0, len(test_split), 3):
        meta = test_split.meta(i)
        caption = test_split.sample_caption(i, rng)
        found = prompt_attributes(caption)
        assert found["style"] == meta["style"], caption
        assert found["tonic"] in (None, meta["tonic"]) and found["mode"] in (None, meta["mode"]), caption
        assert found["meter"] in (None, meta["meter"]) and found["texture"] in (None, meta["texture"]), caption
        assert (found["tonic"] is None) == (key_name(meta["tonic"], meta["mode"]) not in caption), caption
    for tonic in range(12):
        for mode in ("major", "minor", "dorian"):
            found = prompt_attributes(f"A tune in {key_name(tonic, mode)}")
            assert (found["tonic"], found["mode"]) == (tonic, mode)
    assert prompt_attributes("some relaxing music from a late collection")["style"] is None
    assert prompt_attributes("a Chinese melody")["style"] == "chinese_folk"
    free = prompt_attributes("a lively Irish reel in Bb major, 2/4, at 150 bpm")
    assert (free["style"], free["form"], free["tonic"], free["meter"], free["tempo_bpm"]) == (
        "irish_traditional", "reel", 10, "2/4", 150.0)


@pytest.mark.slow  # the shipped judges (the scorer and MiniLM), loaded once per module
def test_key_accuracy_high_on_cadences_low_on_random_notes(judges):
    keys = [(tonic, mode) for tonic in range(12) for mode in ("major", "minor")]
    prompts = [f"German folk song in {key_name(tonic, mode)}" for tonic, mode in keys]
    built = judges.score(np.stack([cadence(tonic, mode) for tonic, mode in keys]), prompts)
    assert built["key_accuracy"].tolist() == [1.0] * len(keys)
    assert built["scale_fit"].min() == 1.0
    rng = np.random.default_rng(0)
    random_codes = rng.choice([symbolic.HOLD, *range(14, 50)], size=(len(keys), 4, 128), p=None)
    noise = judges.score(random_codes, prompts)
    assert noise["key_accuracy"].mean() < 0.25
    assert noise["scale_fit"].mean() < 0.8
    assert np.isnan(judges.score(cadence(0, "major")[None], ["German folk song"])["key_accuracy"][0])


@pytest.mark.slow  # the shipped judges
def test_realism_zero_for_real_segments_large_for_caricatures(judges, test_split):
    indices, prompts = choose_prompts(test_split, 60, seed=1)
    real = judges.score(test_split.codes(indices), prompts)
    # Each of the 7 features' range is the style's central 90 %, so a real segment lies inside all of them
    # about half the time (0.9 ** 7 = 0.48 if they were independent) and is never far outside.
    assert (real["realism_distance"] == 0).mean() >= 0.4 and real["realism_distance"].mean() < 0.3
    repeated = np.zeros((len(prompts), 4, 128), np.uint8)
    repeated[:, 0] = symbolic.pitch_to_token(67)  # one pitch, a new onset every 16th
    caricature = judges.score(repeated, prompts)
    assert caricature["realism_distance"].min() > 3.0
    assert caricature["quality"].mean() < real["quality"].mean() - 0.3
    assert judges.distribution_distance(repeated, prompts) > 5 * judges.distribution_distance(
        test_split.codes(indices), prompts)
    parts = ("key_accuracy", "texture_adherence", "style_adherence", "meter_adherence", "text_match", "realism")
    assert np.allclose(real["quality"], np.nanmean(np.stack([real[p] for p in parts]), axis=0))
    assert ((real["quality"] >= 0) & (real["quality"] <= 1)).all()


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T
    assert abs(frechet_distance(np.zeros(5), cov, np.zeros(5), cov)) < 1e-8
    assert frechet_distance(np.zeros(5), cov, np.full(5, 2.0), cov) == pytest.approx(20.0)


@pytest.mark.slow  # the shipped judges
def test_shipped_scorer_prefers_own_captions(judges, test_split):
    manifest = read_json(DEFAULT_DIR / "manifest.json")
    assert manifest["weights_sha256"] == file_sha256(DEFAULT_DIR / "model.safetensors")
    assert (DEFAULT_DIR / "model.safetensors").stat().st_size <= MAX_SIZE_BYTES
    assert "judges train-scorer" in manifest["command"] and manifest["dataset_sha256"]
    scorer = ContrastiveScorer.load()
    indices, prompts = choose_prompts(test_split, 20, seed=3)  # round robin: neighbours differ in style
    music = scorer.embed_codes(test_split.codes(indices))
    text = scorer.embed_prompts(prompts)
    assert np.allclose(np.linalg.norm(music, axis=1), 1.0, atol=1e-5)
    own = (music * text).sum(1)
    other = (music * np.roll(text, 1, axis=0)).sum(1)
    assert (own > other).sum() >= 16  # chance: 10 of 20


@pytest.fixture()
def one_thread():
    """Sampling on a shared, loaded machine: one torch thread is ~50x faster than two fighting for cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # the gamma sweep end to end with the shipped judges
def test_sweep_end_to_end(judges, tmp_path, one_thread):
    result = run_sweep(SweepConfig(prompts=2, samples=2, gammas=(1.0, 2.0)), tmp_path / "sweep", judges=judges,
                       log=lambda message: None)
    saved = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert saved["acceptance"]["peak_gamma"] in (1.0, 2.0) and set(saved["gammas"]) == {"1", "2"}
    assert 0 <= saved["gammas"]["2"]["quality"] <= 1 and saved["gammas"]["1"]["diversity"] >= 0
    assert saved["real"]["quality"] == result["real"]["quality"]
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert "| real test |" in table and "\n| 2 |" in table
    assert len(saved["gammas"]["2"]["per_prompt"]["quality"]) == 2


@pytest.mark.parametrize("gammas", ["2,3", "1,x", "1,1"])
def test_sweep_cli_rejects_bad_gammas(gammas, tmp_path):
    from musicgen_cfg import cli

    with pytest.raises(UserError):
        cli.parse(["judges", "sweep-gamma", "--gammas", gammas, "--out", str(tmp_path / "x")])
