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
    ("an Irish reel on the fiddle", "fiddle", 184.0),  # the form's tempo when no tempo is named
    ("three slip jigs for flute", "flute", 168.0),
    ("a lively reel", DEFAULT_INSTRUMENT, 140.0),  # a tempo word beats the form
    ("a reel at 120 bpm", DEFAULT_INSTRUMENT, 120.0),
    ("a Bach chorale", DEFAULT_INSTRUMENT, 76.0),  # a style name without a form: the style's tempo
    ("a quartet in G major", "strings", 100.0),
    ("vocal quartet", "choir", 100.0),  # the first keyword still wins
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


def test_named_tempo_follows_the_caption_table():
    for form, bpm in captions.FORM_TEMPO_BPM.items():
        assert captions.named_tempo(f"A traditional {form}") == bpm, form
    for style in captions.STYLES.values():
        for name in style.names:
            assert captions.named_tempo(name) in (style.tempo_bpm, *captions.FORM_TEMPO_BPM.values()), name
    assert captions.named_tempo("a kazoo solo") is None


DROP_ALL = captions.CaptionDropout(style=1.0, instrument=1.0, key=1.0, meter=1.0, texture=1.0, tempo=1.0)
KEEP_ALL = captions.CaptionDropout(style=0.0, instrument=0.0, key=0.0, meter=0.0, texture=0.0, tempo=0.0)


def test_attributes_round_trip_through_the_judges_reading_of_prompts():
    """Every attribute a caption keeps is read back from its text as the metadata said (both directions)."""
    from musicgen_cfg.world.judges import prompt_attributes

    rng = random.Random(3)
    for _ in range(1000):
        meta = _random_meta(rng)
        caption = captions.compose_caption(meta, rng, KEEP_ALL)
        read = prompt_attributes(caption.text)
        assert (read["tonic"], read["mode"]) == (meta["tonic"], meta["mode"]), caption.text
        assert read["meter"] == meta["meter"], caption.text
        assert read["texture"] == meta["texture"], caption.text
        assert read["tempo_bpm"] == caption.settings.tempo_bpm, caption.text
        assert render_settings(caption.text) == caption.settings, caption.text


@pytest.mark.parametrize("attribute", ["key", "meter", "texture", "tempo", "style", "instrument"])
def test_per_attribute_dropout_removes_only_that_attribute(attribute):
    from musicgen_cfg.world.judges import prompt_attributes

    rng = random.Random(4)
    dropout = captions.CaptionDropout(**{**vars(KEEP_ALL), attribute: 1.0})
    for _ in range(300):
        meta = {**_random_meta(rng), "style": "irish_traditional", "form": "reel"}
        caption = captions.compose_caption(meta, rng, dropout)
        read = prompt_attributes(caption.text)
        assert render_settings(caption.text) == caption.settings, caption.text
        present = {"key": read["tonic"] is not None, "meter": read["meter"] is not None,
                   "texture": read["texture"] is not None, "tempo": read["tempo_bpm"] is not None,
                   "style": read["style"] is not None,
                   # Irish tunes are never rendered on the default piano: a named instrument selects another.
                   "instrument": render_settings(caption.text).instrument != DEFAULT_INSTRUMENT}
        assert not present[attribute], caption.text
        assert all(present[other] for other in present if other != attribute), caption.text
        if attribute == "style":  # no form named and no tempo word: no table tempo either
            assert "reel" not in caption.text.lower()
        if attribute == "tempo":  # the named form (else the style name) still sets the tempo
            assert caption.settings.tempo_bpm == (184.0 if "reel" in caption.text.lower() else 120.0), caption.text


def test_dropping_everything_leaves_an_empty_caption_with_default_settings():
    caption = captions.compose_caption(_random_meta(random.Random(5)), random.Random(5), DROP_ALL)
    assert caption.text == ""
    assert caption.settings == DEFAULTS == render_settings(caption.text)


def test_default_dropout_rates_are_the_measured_attribute_rates():
    rng = random.Random(6)
    dropout = captions.CaptionDropout()
    n, kept = 4000, {"key": 0, "meter": 0, "texture": 0}
    from musicgen_cfg.world.judges import prompt_attributes

    for _ in range(n):
        read = prompt_attributes(captions.caption_for(_random_meta(rng), rng, dropout))
        kept["key"] += read["tonic"] is not None
        kept["meter"] += read["meter"] is not None
        kept["texture"] += read["texture"] is not None
    for attribute, count in kept.items():
        expected = 1 - getattr(dropout, attribute)
        assert abs(count / n - expected) < 4 * (expected * (1 - expected) / n) ** 0.5, attribute


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_dropout_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError, match="caption dropout of meter"):
        captions.CaptionDropout(meter=bad)


# compose_caption's texts before CaptionDropout existed (the captions the shipped base was trained on).
SHIPPED_CAPTIONS = [
    'Italian madrigal, in C minor, 6/8 time, slow, for string ensemble',
    'Old Scottish melody on tin whistle, in E minor, single melodic line, brisk',
    'Presto sacred Renaissance polyphony, in 4/4, in C minor, unaccompanied melody, on strings',
    'Scots jig played on harpsichord, in E-flat minor, 4/4 time, at 68 bpm',
    'Adagio Chinese folk song, 4/4 time, in F minor, played on flute',
    'Renaissance mass movement on strings, in B minor, adagio',
]


def test_default_dropout_draws_the_shipped_base_captions():
    rng = random.Random(0)

    def meta(r):
        return {"style": r.choice(sorted(captions.STYLES)), "form": r.choice(["", "jig", "reel", "air"]),
                "tonic": r.randrange(12), "mode": "minor", "meter": r.choice(["4/4", "6/8"]),
                "tempo_bpm": r.choice([0, 72]), "texture": "solo"}

    assert [captions.compose_caption(meta(rng), rng).text for _ in SHIPPED_CAPTIONS] == SHIPPED_CAPTIONS
