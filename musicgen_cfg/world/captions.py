"""Captions of the default world: piece metadata -> text prompt, and text prompt -> render settings.

Library module (no command). `corpus.SegmentDataset` draws captions with `caption_for`; the symbolic codec
reads the instrument and tempo of any prompt with `render_settings`.

One table drives both directions, so every caption renders as it says:
- INSTRUMENTS: each timbre of `synth`, the keywords that select it in a prompt, and the phrases captions use.
- TEMPO_WORDS: tempo words and their quarter-note bpm; "<N> bpm" in a prompt overrides them.
- STYLES: per style of the corpus, its names, the instruments it is rendered with, and its usual tempo.

`render_settings(prompt)`: the instrument is the one whose keyword appears first in the prompt (a longer
keyword wins a tie), the tempo is "<N> bpm" if present (clamped to MIN_BPM..MAX_BPM), else the first tempo
word, else the tempo the table gives the first dance form named (FORM_TEMPO_BPM: "a reel" plays at 184),
else that of the first style name (STYLES: "a Bach chorale" plays at 76), else the defaults
(DEFAULT_INSTRUMENT, DEFAULT_BPM). Matching is case-insensitive on whole words and reads only the first
MAX_PROMPT_CHARS characters; it never fails: empty or unknown prompts get defaults.

`CaptionDropout`: per-attribute probabilities that a caption leaves an attribute (style name, instrument,
key, meter, texture, tempo) out, so that a model trained on the captions (`musicgen-cfg pretrain`) learns
each attribute on its own, not only through the style that usually comes with it.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_INSTRUMENT = "piano"
DEFAULT_BPM = 100.0
MIN_BPM, MAX_BPM = 30.0, 300.0
MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class Instrument:
    keywords: tuple[str, ...]  # words that select this timbre in a prompt
    phrases: tuple[str, ...]  # how captions name it (each contains a keyword)


INSTRUMENTS = {
    "organ": Instrument(("organ", "pipe organ", "church organ"),
                        ("played on a pipe organ", "on church organ", "for organ")),
    "strings": Instrument(("strings", "string quartet", "quartet", "string ensemble", "string orchestra", "cello",
                           "viola"),
                          ("played by strings", "for string ensemble", "on strings")),
    "choir": Instrument(("choir", "chorus", "voices", "singers", "vocal", "a cappella"),
                        ("sung by a choir", "for choir", "by an a cappella choir")),
    "flute": Instrument(("flute", "whistle", "tin whistle", "fife", "recorder"),
                        ("played on flute", "on tin whistle", "for flute")),
    "fiddle": Instrument(("fiddle", "violin", "erhu"), ("played on fiddle", "on solo violin", "for fiddle")),
    "harp": Instrument(("harp", "guzheng"), ("played on harp", "on the harp", "for harp")),
    "harpsichord": Instrument(("harpsichord", "cembalo"), ("played on harpsichord", "for harpsichord")),
    "piano": Instrument(("piano", "pianoforte", "keyboard"), ("played on piano", "for piano", "on the piano")),
}

# Quarter-note beats per minute. Captions pick the word closest to a piece's tempo.
TEMPO_WORDS = {
    "grave": 40, "largo": 50, "lento": 56, "adagio": 66, "slow": 70, "andante": 84, "moderato": 100,
    "moderate": 100, "allegretto": 112, "allegro": 132, "lively": 140, "fast": 150, "vivace": 160,
    "brisk": 168, "presto": 184,
}


@dataclass(frozen=True)
class Style:
    names: tuple[str, ...]  # caption names without a dance form
    form_names: tuple[str, ...]  # names with "{form}" for pieces whose form (jig, reel...) is known
    instruments: tuple[str, ...]  # drawn uniformly; repeat a name to weight it
    tempo_bpm: int  # usual quarter-note tempo when the score has none


STYLES = {
    "chorale": Style(("Bach chorale", "four-part chorale harmonization by J. S. Bach", "Lutheran chorale",
                      "Baroque chorale"), (), ("organ", "organ", "choir", "strings", "piano"), 76),
    "renaissance_sacred": Style(("Renaissance mass movement", "Palestrina mass movement",
                                 "sacred Renaissance polyphony"), (), ("choir", "choir", "organ", "strings"), 96),
    "madrigal": Style(("Monteverdi madrigal", "Italian madrigal", "late Renaissance madrigal"), (),
                      ("choir", "choir", "strings", "harpsichord"), 112),
    "medieval": Style(("Italian Trecento song", "medieval Italian polyphony", "fourteenth-century ballata"), (),
                      ("choir", "harp", "flute", "organ"), 96),
    "string_quartet": Style(("Classical string quartet", "string quartet movement", "string quartet"), (),
                            ("strings",), 120),
    "german_folk": Style(("German folk song", "traditional German Volkslied", "German folk melody"),
                         ("German folk {form}",), ("piano", "flute", "choir", "harp", "strings"), 100),
    "chinese_folk": Style(("Chinese folk song", "traditional Chinese folk melody", "Han Chinese folk tune"), (),
                          ("flute", "flute", "harp", "fiddle", "piano"), 84),
    "irish_traditional": Style(("Irish traditional tune", "Irish folk melody", "tune from O'Neill's Music of Ireland"),
                               ("Irish {form}", "traditional Irish {form}", "Irish dance tune, a {form}"),
                               ("fiddle", "fiddle", "flute", "harp"), 120),
    "american_fiddle": Style(("American dance tune", "old-time American tune", "tune from Ryan's Mammoth Collection"),
                             ("American {form}", "old-time American {form}", "{form} from Ryan's Mammoth Collection"),
                             ("fiddle", "fiddle", "flute", "piano"), 132),
    "scottish_air": Style(("Scottish air", "Scots tune from Aird's collection", "old Scottish melody"),
                          ("Scottish {form}", "Scots {form}"), ("fiddle", "harp", "flute", "harpsichord"), 96),
    "english_folk": Style(("English folk tune", "Northumbrian folk tune", "English country dance tune"),
                          ("English {form}", "English country {form}"), ("fiddle", "flute", "harp", "piano"), 120),
}

# Quarter-note tempo of dance forms (notated tempo still wins).
FORM_TEMPO_BPM = {"jig": 168, "slip jig": 168, "slide": 168, "reel": 184, "hornpipe": 140, "strathspey": 120,
                  "polka": 160, "march": 120, "quickstep": 150, "waltz": 150, "clog": 140, "air": 70,
                  "schottische": 132, "mazurka": 140, "set dance": 132, "song": 96}

_MAJOR_NAMES = ("C", "D-flat", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat", "B")
_MINOR_NAMES = ("C", "C-sharp", "D", "E-flat", "E", "F", "F-sharp", "G", "G-sharp", "A", "B-flat", "B")
_MINOR_LIKE_MODES = ("minor", "dorian", "phrygian", "aeolian", "locrian")
_TEXTURES = {"solo": ("solo melody", "unaccompanied melody", "single melodic line"),
             "two-part": ("two-part", "in two parts"), "three-part": ("three-part", "in three parts"),
             "four-part": ("four-part harmony", "in four parts", "four-part texture")}


@dataclass(frozen=True)
class CaptionDropout:
    """Probability that a caption leaves each attribute out (the defaults are the shipped base's captions)."""

    style: float = 0.0  # the style / dance-form name ("Irish jig", "Bach chorale")
    instrument: float = 0.0
    key: float = 0.15
    meter: float = 0.5
    texture: float = 0.5
    tempo: float = 0.1

    def __post_init__(self):
        for name, value in vars(self).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"caption dropout of {name} must lie in [0, 1], got {value}")


@dataclass(frozen=True)
class RenderSettings:
    """How the codec plays a prompt: a synth timbre and a quarter-note tempo."""

    instrument: str = DEFAULT_INSTRUMENT
    tempo_bpm: float = DEFAULT_BPM


@dataclass(frozen=True)
class Caption:
    text: str
    settings: RenderSettings  # what render_settings(text) returns


def key_name(tonic: int, mode: str) -> str:
    """Pitch class + mode -> 'F-sharp minor' (spelled as the key signature would)."""
    names = _MINOR_NAMES if mode in _MINOR_LIKE_MODES else _MAJOR_NAMES
    return f"{names[tonic % 12]} {mode}"


def tempo_word_for(bpm: float) -> str:
    return min(TEMPO_WORDS, key=lambda word: (abs(TEMPO_WORDS[word] - bpm), word))


def compose_caption(meta: dict, rng: random.Random, dropout: CaptionDropout = CaptionDropout()) -> Caption:
    """A caption for a piece's metadata (style, form, tonic, mode, meter, tempo_bpm, texture, ...).

    Each attribute is left out with its `dropout` probability. With the default dropout the random draws
    are those of the captions the shipped base was trained on (same text for the same rng state).
    """
    style = STYLES[meta["style"]]
    form = meta.get("form") or ""
    if form and style.form_names and rng.random() < 0.8:
        name = rng.choice(style.form_names).format(form=form)
    else:
        name = rng.choice(style.names)
    instrument = rng.choice(style.instruments)
    instrument_phrase = rng.choice(INSTRUMENTS[instrument].phrases)
    bpm = meta.get("tempo_bpm") or FORM_TEMPO_BPM.get(form, style.tempo_bpm)
    bpm = bpm * rng.uniform(0.85, 1.15)  # performances vary; the caption states the tempo used
    tempo_roll = rng.random()
    # Of the captions that state a tempo, 2 in 9 give "<N> bpm", the others a tempo word.
    if tempo_roll < dropout.tempo:
        tempo_text = ""
    elif tempo_roll < dropout.tempo + (1 - dropout.tempo) * 2 / 9:
        tempo_text = f"at {round(bpm / 4) * 4:.0f} bpm"
    else:
        tempo_text = tempo_word_for(bpm)
    details = []
    if rng.random() < 1 - dropout.key:
        details.append(f"in {key_name(meta['tonic'], meta['mode'])}")
    if rng.random() < 1 - dropout.meter and meta.get("meter"):
        details.append(rng.choice((f"{meta['meter']} time", f"in {meta['meter']}")))
    if rng.random() < 1 - dropout.texture:
        details.append(rng.choice(_TEXTURES[meta.get("texture", "four-part")]))
    rng.shuffle(details)
    layout = rng.randrange(3)
    # Style and instrument dropout draw only when enabled, so the default captions keep their draws.
    if dropout.style and rng.random() < dropout.style:
        name = ""
    if dropout.instrument and rng.random() < dropout.instrument:
        instrument, instrument_phrase = DEFAULT_INSTRUMENT, ""
    if layout == 0 and tempo_text and not tempo_text.startswith("at"):
        parts = [f"{tempo_text} {name}".strip(), *details, instrument_phrase]
    elif layout == 1:
        parts = [f"{name} {instrument_phrase}".strip(), *details, tempo_text]
    else:
        parts = [name, *details, tempo_text, instrument_phrase]
    text = ", ".join(part for part in parts if part)
    text = text[:1].upper() + text[1:]
    if tempo_text.startswith("at"):
        render_bpm = float(tempo_text.split()[1])
    elif tempo_text:
        render_bpm = float(TEMPO_WORDS[tempo_text])
    else:
        render_bpm = named_tempo(name) or DEFAULT_BPM
    return Caption(text, RenderSettings(instrument, render_bpm))


def random_render_prompt(rng: random.Random, tempo_range_bpm: tuple[float, float]) -> str:
    """'<instrument> at <N> bpm' with a uniform instrument and a log-uniform tempo (embedder training clips)."""
    bpm = math.exp(rng.uniform(*map(math.log, tempo_range_bpm)))
    return f"{rng.choice(sorted(INSTRUMENTS))} at {bpm:.0f} bpm"


def caption_for(meta: dict, rng: random.Random, dropout: CaptionDropout = CaptionDropout()) -> str:
    """A randomly paraphrased caption for a piece's metadata (see compose_caption)."""
    return compose_caption(meta, rng, dropout).text


def _alternation(words) -> str:
    # Longest first so "tin whistle" beats "whistle" and "slip jig" beats "jig" at the same position.
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


@lru_cache(maxsize=1)
def _keyword_patterns() -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    instrument_words = [w for spec in INSTRUMENTS.values() for w in spec.keywords]
    return (re.compile(rf"\b({_alternation(instrument_words)})\b", re.IGNORECASE),
            re.compile(rf"\b({_alternation(TEMPO_WORDS)})\b", re.IGNORECASE),
            re.compile(r"\b(\d{1,4}(?:\.\d+)?)\s*bpm\b", re.IGNORECASE))


@lru_cache(maxsize=1)
def _named_tempo_patterns() -> tuple[re.Pattern, re.Pattern, dict[str, int]]:
    style_tempo = {name.lower(): spec.tempo_bpm for spec in STYLES.values() for name in spec.names}
    return (re.compile(rf"\b({_alternation(FORM_TEMPO_BPM)})s?\b", re.IGNORECASE),
            re.compile(rf"\b({_alternation(style_tempo)})\b", re.IGNORECASE), style_tempo)


def named_tempo(text: str) -> float | None:
    """The table's tempo for the first dance form named in `text`, else for the first style name; None if neither."""
    form_pattern, style_pattern, style_tempo = _named_tempo_patterns()
    if match := form_pattern.search(text):
        return float(FORM_TEMPO_BPM[match.group(1).lower()])
    if match := style_pattern.search(text):
        return float(style_tempo[match.group(1).lower()])
    return None


def render_settings(prompt: str) -> RenderSettings:
    """Instrument and tempo a prompt asks for (rules in the module docstring); never raises."""
    text = (prompt or "")[:MAX_PROMPT_CHARS] if isinstance(prompt, str) else ""
    instrument_pattern, tempo_pattern, bpm_pattern = _keyword_patterns()
    instrument = DEFAULT_INSTRUMENT
    match = instrument_pattern.search(text)
    if match:
        word = match.group(1).lower()
        instrument = next(name for name, spec in INSTRUMENTS.items() if word in spec.keywords)
    if bpm_match := bpm_pattern.search(text):
        tempo_bpm = min(max(float(bpm_match.group(1)), MIN_BPM), MAX_BPM)
    elif word_match := tempo_pattern.search(text):
        tempo_bpm = float(TEMPO_WORDS[word_match.group(1).lower()])
    else:
        tempo_bpm = named_tempo(text) or DEFAULT_BPM
    return RenderSettings(instrument, tempo_bpm)
