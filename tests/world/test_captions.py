"""Captions and prompt -> render settings. `pytest tests/world/test_captions.py`"""

import random

import pytest

from musicgen_cfg.world import captions
from musicgen_cfg.world.captions import DEFAULT_BPM, DEFAULT_INSTRUMENT, RenderSettings, render_settings

DEFAULTS = RenderSettings(DEFAULT_INSTRUMENT, DEFAULT_BPM)


@pytest.mark.parametrize("prompt", ["", "   ", "a kazoo solo with theremin", "x" * 100_000,
                                    "lorem ipsum " * 20_000, "🎻 ünïcödé ♩ = ?", "organ" * 10])
def test_empty_unknown_and_long_prompts_give_defaults(prompt):
    assert render_settings(prompt) == DEFAULTS


def test_non_string_prompt_gives_defaults():
    assert render_settings(None) == DEFAULTS


@pytest.mark.parametrize("prompt, instrument, bpm", [
    ("A slow chorale on the organ", "organ", 70.0),
    ("lively Irish jig, FIDDLE", "fiddle", 140.0),
    ("Presto harpsichord sonata", "harpsichord", 184.0),
    ("tin whistle reel at 120 bpm", "flute", 120.0),
    ("string quartet, adagio", "strings", 66.0),
    ("a cappella choir, andante", "choir", 84.0),
    ("harp and flute duet, allegro then largo", "harp", 132.0),  # first keyword wins
    ("piano at 999 bpm", "piano", captions.MAX_BPM),
    ("piano at 5 bpm", "piano", captions.MIN_BPM),
    ("moderato", DEFAULT_INSTRUMENT, 100.0),
])
def test_keywords_map_to_settings(prompt, instrument, bpm):
    assert render_settings(prompt) == RenderSettings(instrument, bpm)


def test_keywords_deep_in_a_long_prompt_are_ignored():
    assert render_settings("x " * captions.MAX_PROMPT_CHARS + "organ") == DEFAULTS


def test_every_timbre_is_reachable_by_keyword_and_keywords_are_unambiguous():
    from musicgen_cfg.world.synth import TIMBRES

    assert set(captions.INSTRUMENTS) == set(TIMBRES)
    all_keywords = [k for spec in captions.INSTRUMENTS.values() for k in spec.keywords]
    assert len(all_keywords) == len(set(all_keywords))
    for name, spec in captions.INSTRUMENTS.items():
        for keyword in spec.keywords:
            assert render_settings(f"something {keyword} something").instrument == name


def _random_meta(rng: random.Random) -> dict:
    return {"style": rng.choice(list(captions.STYLES)), "form": rng.choice(["", *captions.FORM_TEMPO_BPM]),
            "tonic": rng.randrange(12), "mode": rng.choice(["major", "minor", "dorian", "mixolydian"]),
            "meter": rng.choice(["4/4", "3/4", "6/8", "2/2"]), "tempo_bpm": rng.choice([0, 0, 72, 150]),
            "texture": rng.choice(["solo", "two-part", "three-part", "four-part"])}


def test_captions_render_as_they_say():
    rng = random.Random(0)
    for _ in range(3000):
        caption = captions.compose_caption(_random_meta(rng), rng)
        assert render_settings(caption.text) == caption.settings, caption.text


def test_caption_instruments_follow_the_style():
    rng = random.Random(1)
    for style, spec in captions.STYLES.items():
        meta = {**_random_meta(rng), "style": style}
        chosen = {captions.compose_caption(meta, rng).settings.instrument for _ in range(200)}
        assert chosen == set(spec.instruments), style


def test_captions_paraphrase_and_are_reproducible():
    meta = {"style": "irish_traditional", "form": "jig", "tonic": 2, "mode": "major", "meter": "6/8",
            "tempo_bpm": 0, "texture": "solo"}
    texts = {captions.caption_for(meta, random.Random(seed)) for seed in range(50)}
    assert len(texts) > 20
    assert captions.caption_for(meta, random.Random(7)) == captions.caption_for(meta, random.Random(7))
    assert any("Irish jig" in text for text in texts)
    assert any("D major" in text for text in texts)


def test_key_names_are_spelled_by_mode():
    assert captions.key_name(6, "minor") == "F-sharp minor"
    assert captions.key_name(10, "major") == "B-flat major"
    assert captions.key_name(1, "dorian") == "C-sharp dorian"
    assert captions.key_name(13, "mixolydian") == "D-flat mixolydian"
