"""Quality judges of the default world: evaluation only (finetuning never sees them).

    judges = DefaultWorldJudges()
    metrics = judges.score(codes, prompts)             # codes int [N, 4, T] -> {name: float64 [N]}, incl. "quality"
    fad = judges.distribution_distance(codes, prompts)  # FAD-style distance to real test segments
    vectors = judges.embed_codes(codes)                 # [N, D] unit vectors: the held-out diversity embedder

Commands: `musicgen-cfg judges train-scorer` (scorer.py) and `musicgen-cfg judges sweep-gamma` (gamma_sweep.py).

Each prompt is read back into the caption vocabulary with `prompt_attributes` (style, form, key, meter,
texture, tempo). A judge whose attribute the prompt does not state gives NaN for that sample and is
left out of its quality. Reference data: the TRAIN split describes what each style / meter looks like
(adherence ranges); the held-out TEST split is the reference of realism, text match and the FAD.

Per-sample judges (notes are read with symbolic's rules: HOLD after a rest is a rest):
- key_accuracy (needs a key): the Krumhansl-Schmuckler key of the sample - correlation of its
  duration-weighted pitch-class histogram (all voices) with the 24 rotations of the Albrecht & Shanahan
  (2013) major / minor profiles - has the prompt's tonic and the prompt mode's family (major-like or
  minor-like, as captions.py spells keys). 0 for a sample without notes. Real test segments: ~0.6, the
  ceiling set by the corpus labels (Essen's `K:` headers often name the final, not the mode).
- scale_fit (needs a key; reported, not in quality): fraction of onsets whose pitch class is in the
  prompt's scale (MODE_SCALES; minor includes the raised leading tone).
- texture_adherence: number of active voices (voices with an onset) equals the prompt's texture (solo 1,
  two-part 2, three-part 3, four-part 4), or, without a texture in the prompt, the most common count of
  the style's real segments.
- style_adherence (needs a style): note density (onsets per active voice) inside the central 90 % of
  the style's real segments.
- meter_adherence (needs a meter with >= MIN_REFERENCE real segments): two statistics inside the real
  range of that meter. Onsets are weighted log(1 + duration) (long notes accent their beat).
  strong_beat: mean metric weight of the onsets (downbeat 2, other beats 1, off-beats 0; compound meters
  beat in dotted units), at the bar phase that maximises it, must lie in the central 90 % of the meter's
  real segments (this tells beat units apart, e.g. 4/2 from 4/4). periodicity: autocorrelation of the
  onset weights at one bar minus at the other family's bar (4/3 of a triple bar, 3/4 of a duple one)
  must reach the meter's 10th percentile (this tells triple from duple, e.g. 3/4 from 4/4).
- text_match: MuLan-style scorer (scorer.py) - the fraction of real test segments whose cosine
  similarity to the prompt is below the sample's (0.5 = as typical as a random real segment).
- realism: exp(-realism_distance); realism_distance sums, over REALISM_FEATURES, how far the sample's
  value lies outside the central 90 % of the real test segments of its style, in units of that range's
  width. Real segments score ~0; a caricature (one note repeated, a wall of 16ths) scores high.
- quality: the mean of key_accuracy, texture_adherence, style_adherence, meter_adherence, text_match and
  realism over those the prompt allows (NaN parts are skipped), in [0, 1].
Distribution level: distribution_distance is the Frechet distance between Gaussians fitted to the
scorer's music-tower embeddings of the samples and of the real test segments, the latter weighted so
their style mix equals the prompts'.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from musicgen_cfg.errors import UserError
from musicgen_cfg.world import symbolic
from musicgen_cfg.world.captions import (
    _MINOR_LIKE_MODES,
    _TEXTURES,
    FORM_TEMPO_BPM,
    MAX_PROMPT_CHARS,
    STYLES,
    TEMPO_WORDS,
)

# Pitch classes of each mode's scale relative to its tonic.
MODE_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11), "ionian": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10, 11), "aeolian": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10), "phrygian": (0, 1, 3, 5, 7, 8, 10), "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10), "locrian": (0, 1, 3, 5, 6, 8, 10),
}
# Albrecht & Shanahan (2013) key profiles, tonic first.
MAJOR_PROFILE = np.array([0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081])
MINOR_PROFILE = np.array([0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052])
TEXTURE_VOICES = {"solo": 1, "two-part": 2, "three-part": 3, "four-part": 4}
REALISM_FEATURES = ("density", "pc_entropy", "pitch_range", "rest_fraction", "repeat_rate", "mean_interval",
                    "duration_entropy")
QUALITY_PARTS = ("key_accuracy", "texture_adherence", "style_adherence", "meter_adherence", "text_match", "realism")
CENTRAL = (5.0, 95.0)  # the "central 90 %" of real segments
PERIODICITY_PERCENTILE = 10.0
MIN_REFERENCE = 20  # fewer real segments of a style / meter than this: no reference, the judge gives NaN

# ------------------------------------------------------------------------------------ prompt -> attributes

_LETTER_PITCH = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_TITLE_WORDS = {"music", "collection", "mammoth"}  # O'Neill's Music of Ireland, Ryan's Mammoth Collection


@lru_cache(maxsize=1)
def _patterns() -> dict:
    def alternation(words):
        return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))

    forms = alternation(FORM_TEMPO_BPM)
    style_phrases = []  # (compiled phrase, style); "{form}" slots accept any dance form
    for style, spec in STYLES.items():
        for name in (*spec.names, *spec.form_names):
            pattern = re.escape(name).replace(re.escape("{form}"), f"(?:{forms})")
            style_phrases.append((re.compile(rf"\b{pattern}\b", re.IGNORECASE), style))
    # Fallback for free text: capitalised words of the style names that name one style only ("Irish",
    # "Bach", "Chinese"), except the collection-title words that prompts use generically.
    owners: dict[str, set] = {}
    for style, spec in STYLES.items():
        for name in (*spec.names, *spec.form_names):
            for word in re.findall(r"\b[A-Z][A-Za-z'-]{2,}", name):
                owners.setdefault(word.lower(), set()).add(style)
    distinctive = {w: next(iter(s)) for w, s in owners.items() if len(s) == 1 and w not in _TITLE_WORDS}
    modes = alternation(MODE_SCALES)
    return {
        "styles": style_phrases,
        "distinctive": (re.compile(rf"\b({alternation(distinctive)})\b", re.IGNORECASE), distinctive),
        "form": re.compile(rf"\b({forms})s?\b", re.IGNORECASE),
        # Key letters are upper case ("a minor hit" is not A minor); accidentals as captions spell them or #/b.
        "key": re.compile(rf"\b([A-G])(-sharp|-flat| sharp| flat|#|b)?\s+((?i:{modes}))\b"),
        "meter": re.compile(r"(?<![\d/])(\d{1,2})/(1|2|4|8|16)(?![\d/])"),
        "texture": re.compile(rf"\b({alternation(p for ps in _TEXTURES.values() for p in ps)})\b", re.IGNORECASE),
        "tempo": re.compile(rf"\b({alternation(TEMPO_WORDS)})\b", re.IGNORECASE),
        "bpm": re.compile(r"\b(\d{1,4}(?:\.\d+)?)\s*bpm\b", re.IGNORECASE),
    }


def prompt_attributes(prompt) -> dict:
    """A free-text prompt -> {style, form, tonic, mode, meter, texture, tempo_word, tempo_bpm}; None where
    the prompt does not say. Never raises; reads the first MAX_PROMPT_CHARS characters like render_settings.

    style: the longest caption style name found (e.g. "Irish {form}", "Bach chorale"), else a capitalised
    word that only one style's names use ("Chinese", case-insensitive in the prompt); tonic: pitch class 0-11; mode: lower case (MODE_SCALES);
    meter: "n/d"; texture: a key of TEXTURE_VOICES; tempo_bpm: an explicit "<N> bpm", else the tempo word's.
    """
    text = prompt[:MAX_PROMPT_CHARS] if isinstance(prompt, str) else ""
    patterns = _patterns()
    found = {"style": None, "form": None, "tonic": None, "mode": None, "meter": None, "texture": None,
             "tempo_word": None, "tempo_bpm": None}
    phrase_matches = [(m.end() - m.start(), -m.start(), style) for pattern, style in patterns["styles"]
                      for m in [pattern.search(text)] if m]
    if phrase_matches:
        found["style"] = max(phrase_matches)[2]
    else:
        word_pattern, distinctive = patterns["distinctive"]
        match = word_pattern.search(text)
        found["style"] = distinctive[match.group(1).lower()] if match else None
    if match := patterns["form"].search(text):
        found["form"] = match.group(1).lower()
    if match := patterns["key"].search(text):
        letter, accidental, mode = match.groups()
        shift = 1 if accidental and "sharp" in accidental or accidental == "#" else -1 if accidental else 0
        found["tonic"], found["mode"] = (_LETTER_PITCH[letter] + shift) % 12, mode.lower()
    if match := patterns["meter"].search(text):
        found["meter"] = f"{int(match.group(1))}/{match.group(2)}"
    if match := patterns["texture"].search(text):
        phrase = match.group(1).lower()
        found["texture"] = next(t for t, phrases in _TEXTURES.items() if phrase in phrases)
    if match := patterns["tempo"].search(text):
        found["tempo_word"] = match.group(1).lower()
        found["tempo_bpm"] = float(TEMPO_WORDS[found["tempo_word"]])
    if match := patterns["bpm"].search(text):
        found["tempo_bpm"] = float(match.group(1))
    return found


def is_minor_like(mode: str) -> bool:
    return mode in _MINOR_LIKE_MODES


# ------------------------------------------------------------------------------------------ note statistics


def note_arrays(codes: np.ndarray) -> dict[str, np.ndarray]:
    """codes int [N, 4, T] -> per-frame note arrays, each [N, 4, T]:
    onset (bool), pitch (MIDI at onsets, else 0), duration (frames, at onsets, else 0), sounding (bool),
    previous (pitch of the voice's previous onset at onsets that have one, else -1)."""
    codes = np.asarray(codes).astype(np.int64)
    if codes.ndim != 3 or codes.shape[1] != symbolic.NUM_VOICES:
        raise UserError(f"codes must have shape [N, {symbolic.NUM_VOICES}, T], got {list(codes.shape)}")
    onset = codes >= 2
    pitch = np.where(onset, codes - 2 + symbolic.LOWEST_PITCH, 0)
    frames = np.arange(codes.shape[-1])
    # A frame sounds when the last non-HOLD token at or before it is an onset (running maxima of indices).
    last_token = np.maximum.accumulate(np.where(codes != symbolic.HOLD, frames, -1), axis=-1)
    sounding = np.take_along_axis(onset, np.maximum(last_token, 0), -1) & (last_token >= 0)
    last_onset = np.maximum.accumulate(np.where(onset, frames, -1), axis=-1)
    before = np.concatenate([np.full(codes.shape[:2] + (1,), -1), last_onset[..., :-1]], axis=-1)
    previous = np.where(onset & (before >= 0), np.take_along_axis(pitch, np.maximum(before, 0), -1), -1)
    # A note lasts until the next non-HOLD token (running minima from the end).
    next_token = np.minimum.accumulate(np.where(codes != symbolic.HOLD, frames, len(frames))[..., ::-1], axis=-1)[..., ::-1]
    after = np.concatenate([next_token[..., 1:], np.full(codes.shape[:2] + (1,), len(frames))], axis=-1)
    duration = np.where(onset, after - frames, 0)
    return {"onset": onset, "pitch": pitch, "duration": duration, "sounding": sounding, "previous": previous}


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Entropy (bits) of histograms counts [N, bins]; 0 for an empty one."""
    total = counts.sum(-1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros(counts.shape), where=total > 0)
    return -(p * np.log2(np.where(p > 0, p, 1))).sum(-1)


def _safe_ratio(numerator, denominator, empty):
    return np.where(denominator > 0, numerator / np.maximum(denominator, 1e-12), empty)


def segment_statistics(codes: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample statistics of codes int [N, 4, T]: float64 [N] onsets, active_voices and REALISM_FEATURES,
    pitch_class_histogram [N, 12] (duration-weighted), pitch_class_onsets [N, 12] (onset counts) and
    onset_weights [N, T] (log(1 + duration) at onsets, summed over voices). REALISM_FEATURES:
    density (onsets per active voice), pc_entropy (bits, onset pitch classes), pitch_range (semitones,
    mean over active voices), rest_fraction (silent frames of active voices), repeat_rate (onsets that
    repeat the voice's previous pitch), mean_interval (mean |semitones| between a voice's onsets),
    duration_entropy (bits, note durations up to 16 frames). Empty samples get 0 (rest_fraction 1)."""
    notes = note_arrays(codes)
    onset, pitch, duration, previous = notes["onset"], notes["pitch"], notes["duration"], notes["previous"]
    n = onset.shape[0]
    voice_onsets = onset.sum(-1)  # [N, 4]
    active = voice_onsets > 0
    num_active = active.sum(-1)
    onsets = voice_onsets.sum(-1)
    sample = np.broadcast_to(np.arange(n)[:, None, None], onset.shape)[onset]

    def histogram(bins, size, weights=None):  # per-sample histograms [N, size] of the onsets' bins
        return np.bincount(sample * size + bins, weights, minlength=n * size).reshape(n, size).astype(float)

    pitch_class = pitch[onset] % 12
    count_histogram = histogram(pitch_class, 12)
    duration_histogram = histogram(pitch_class, 12, duration[onset])
    length_histogram = histogram(np.minimum(duration[onset], 16) - 1, 16)
    high = np.where(onset, pitch, -1).max(-1)
    low = np.where(onset, pitch, 10_000).min(-1)
    voice_range = np.where(active, high - low, 0)
    silent = (~notes["sounding"] & active[..., None]).sum((-2, -1))
    pairs = onset & (previous >= 0)
    repeats = (pairs & (previous == pitch)).sum((-2, -1))
    intervals = np.where(pairs, np.abs(pitch - previous), 0).sum((-2, -1))
    return {
        "onsets": onsets.astype(float),
        "active_voices": num_active.astype(float),
        "pitch_class_histogram": duration_histogram,
        "pitch_class_onsets": count_histogram,
        "onset_weights": np.where(onset, np.log1p(duration), 0.0).sum(1),
        "density": _safe_ratio(onsets, num_active, 0.0),
        "pc_entropy": _entropy_bits(count_histogram),
        "pitch_range": _safe_ratio(voice_range.sum(-1), num_active, 0.0),
        "rest_fraction": _safe_ratio(silent, num_active * onset.shape[-1], 1.0),
        "repeat_rate": _safe_ratio(repeats, pairs.sum((-2, -1)), 0.0),
        "mean_interval": _safe_ratio(intervals, pairs.sum((-2, -1)), 0.0),
        "duration_entropy": _entropy_bits(length_histogram),
    }


# -------------------------------------------------------------------------------------------------- key


@lru_cache(maxsize=1)
def _key_profiles() -> np.ndarray:
    """The 24 key profiles [24, 12] (rows 0-11 major on tonic 0-11, 12-23 minor), centred and unit-norm."""
    profiles = np.stack([np.roll(MAJOR_PROFILE, t) for t in range(12)] + [np.roll(MINOR_PROFILE, t) for t in range(12)])
    profiles = profiles - profiles.mean(1, keepdims=True)
    return profiles / np.linalg.norm(profiles, axis=1, keepdims=True)


def find_keys(pitch_class_histogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Krumhansl-Schmuckler key finding: histograms [N, 12] -> (tonic int [N], minor bool [N]);
    tonic -1 for an empty histogram."""
    centred = pitch_class_histogram - pitch_class_histogram.mean(-1, keepdims=True)
    best = (centred @ _key_profiles().T).argmax(-1)
    empty = pitch_class_histogram.sum(-1) <= 0
    return np.where(empty, -1, best % 12), best >= 12


# ------------------------------------------------------------------------------------------------ meter


def bar_frames(meter: str) -> int | None:
    """Frames (16ths) per bar of "n/d", None when it is not a whole number of 16ths."""
    numerator, denominator = (int(x) for x in meter.split("/"))
    frames = numerator * 16 / denominator
    return int(frames) if frames >= 1 and frames == int(frames) else None


def metric_template(meter: str) -> np.ndarray | None:
    """Metric weight per frame of one bar [bar_frames]: downbeat 2, other beats 1, off-beats 0.
    Compound meters (6, 9, 12 over d) beat in dotted units."""
    frames = bar_frames(meter)
    if frames is None:
        return None
    numerator, denominator = (int(x) for x in meter.split("/"))
    beat = 16 * (3 if numerator % 3 == 0 and numerator > 3 else 1) // denominator
    template = np.zeros(frames)
    template[:: max(beat, 1)] = 1.0
    template[0] = 2.0
    return template


def strong_beat_weight(onset_weights: np.ndarray, meter: str) -> np.ndarray:
    """Mean metric weight of the weighted onsets [N, T] under `meter`'s template at the best bar phase [N]."""
    template = metric_template(meter)
    frames = onset_weights.shape[-1]
    total = np.maximum(onset_weights.sum(-1), 1e-12)
    phases = np.stack([np.resize(np.roll(template, phase), frames) for phase in range(len(template))])  # [L, T]
    return (onset_weights @ phases.T).max(-1) / total


def _autocorrelation(onset_weights: np.ndarray, lag: int) -> np.ndarray:
    if lag >= onset_weights.shape[-1]:
        return np.zeros(len(onset_weights))
    energy = np.maximum((onset_weights**2).sum(-1), 1e-12)
    return (onset_weights[:, :-lag] * onset_weights[:, lag:]).sum(-1) / energy


def bar_periodicity(onset_weights: np.ndarray, meter: str) -> np.ndarray:
    """Autocorrelation of onset weights [N, T] at one bar minus at the other family's bar [N]
    (4/3 of a triple bar, 3/4 of a duple bar)."""
    frames = bar_frames(meter)
    other = frames * 4 // 3 if frames % 3 == 0 else max(1, frames * 3 // 4)
    return _autocorrelation(onset_weights, frames) - _autocorrelation(onset_weights, other)


# ----------------------------------------------------------------------------------------------- judges


def _central(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, CENTRAL)
    return float(low), float(high)


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """Frechet distance between two Gaussians: |mu_a - mu_b|^2 + tr(A + B - 2 (A^1/2 B A^1/2)^1/2)."""
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    cross = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def weighted_gaussian(x: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of rows x [N, D] with optional weights [N] (sum > 0)."""
    w = np.full(len(x), 1.0 / len(x)) if weights is None else weights / weights.sum()
    mean = w @ x
    centred = x - mean
    return mean, (centred * w[:, None]).T @ centred / max(1.0 - (w**2).sum(), 1e-12)


class DefaultWorldJudges:
    """The default world's judges (module docstring). Builds its reference statistics once (a few seconds)."""

    def __init__(self, dataset_path=None, scorer_dir=None):
        from musicgen_cfg.checkpoint import file_sha256
        from musicgen_cfg.world.corpus import DEFAULT_PATH, load_dataset
        from musicgen_cfg.world.text_judge import ContrastiveScorer
        from musicgen_cfg.world.text_judge_options import DEFAULT_DIR

        self.scorer_dir = Path(scorer_dir) if scorer_dir is not None else DEFAULT_DIR
        self.scorer = ContrastiveScorer.load(self.scorer_dir)
        self.dataset_sha256 = file_sha256(dataset_path if dataset_path is not None else DEFAULT_PATH)
        train, test = load_dataset("train", dataset_path), load_dataset("test", dataset_path)
        train_stats = segment_statistics(train.codes())
        train_pieces = train.arrays["segment_piece"][train.rows]
        train_meters = train.arrays["piece_meter"][train_pieces]
        train_styles = train.styles
        self.style_voices, self.density_range = {}, {}
        for style in np.unique(train_styles):
            rows = train_styles == style
            if rows.sum() >= MIN_REFERENCE:
                voices, counts = np.unique(train_stats["active_voices"][rows], return_counts=True)
                self.style_voices[str(style)] = int(voices[counts.argmax()])
                self.density_range[str(style)] = _central(train_stats["density"][rows])
        self.meter_reference = {}  # meter -> (strong-beat range, periodicity threshold)
        for meter in np.unique(train_meters):
            rows = train_meters == meter
            if rows.sum() >= MIN_REFERENCE and metric_template(str(meter)) is not None:
                weights = train_stats["onset_weights"][rows]
                self.meter_reference[str(meter)] = (
                    _central(strong_beat_weight(weights, str(meter))),
                    float(np.percentile(bar_periodicity(weights, str(meter)), PERIODICITY_PERCENTILE)))
        # Held-out reference: realism ranges, text-match and FAD embeddings.
        self.test_codes = test.codes()
        self.test_styles = test.styles
        test_stats = segment_statistics(self.test_codes)
        self.realism_range = {"*": self._ranges(test_stats, np.ones(len(test), bool))}
        for style in np.unique(self.test_styles):
            rows = self.test_styles == style
            if rows.sum() >= MIN_REFERENCE:
                self.realism_range[str(style)] = self._ranges(test_stats, rows)
        self.test_embeddings = self.scorer.embed_codes(self.test_codes)

    @staticmethod
    def _ranges(stats: dict, rows: np.ndarray) -> dict[str, tuple[float, float, float]]:
        """Per realism feature: (low, high, width) of the central 90 % of the rows; the width is floored at
        a quarter of the range over all real segments so a style with a constant feature still has a scale."""
        ranges = {}
        for name in REALISM_FEATURES:
            low, high = _central(stats[name][rows])
            everyone = _central(stats[name])
            ranges[name] = (low, high, max(high - low, 0.25 * (everyone[1] - everyone[0]), 1e-6))
        return ranges

    def embed_codes(self, codes) -> np.ndarray:
        """codes int [N, 4, T] -> float32 unit vectors [N, D] (the scorer's music tower)."""
        return self.scorer.embed_codes(np.asarray(codes))

    def realism_distance(self, stats: dict, styles: list[str | None]) -> np.ndarray:
        """Sum over REALISM_FEATURES of the excess outside the style's real central 90 %, in range widths [N]."""
        distance = np.zeros(len(styles))
        for i, style in enumerate(styles):
            ranges = self.realism_range.get(style or "*", self.realism_range["*"])
            for name, (low, high, width) in ranges.items():
                value = stats[name][i]
                distance[i] += max(low - value, value - high, 0.0) / width
        return distance

    def score(self, codes: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        """Per-sample judges of codes int [N, 4, T] for prompts [N] -> {name: float64 [N]} (module docstring).

        Keys: QUALITY_PARTS, quality, scale_fit, text_similarity (raw cosine), realism_distance, meter
        statistics strong_beat / periodicity (NaN without a meter), and the note statistics onsets,
        active_voices and REALISM_FEATURES."""
        codes = np.asarray(codes)
        if len(prompts) != len(codes):
            raise UserError(f"got {len(prompts)} prompts for {len(codes)} code sequences")
        stats = segment_statistics(codes)
        attributes = [prompt_attributes(p) for p in prompts]
        n = len(codes)
        nan = lambda: np.full(n, np.nan)  # noqa: E731
        out = {name: nan() for name in (*QUALITY_PARTS, "scale_fit", "strong_beat", "periodicity")}
        tonic, minor = find_keys(stats["pitch_class_histogram"])
        texture_target = nan()
        for i, attrs in enumerate(attributes):
            if attrs["tonic"] is not None:
                out["key_accuracy"][i] = float(tonic[i] == attrs["tonic"] and minor[i] == is_minor_like(attrs["mode"]))
                scale = [(attrs["tonic"] + step) % 12 for step in MODE_SCALES[attrs["mode"]]]
                onsets = stats["pitch_class_onsets"][i]
                out["scale_fit"][i] = onsets[scale].sum() / onsets.sum() if onsets.sum() else 0.0
            if attrs["texture"] is not None:
                texture_target[i] = TEXTURE_VOICES[attrs["texture"]]
            elif attrs["style"] in self.style_voices:
                texture_target[i] = self.style_voices[attrs["style"]]
            if attrs["style"] in self.density_range:
                low, high = self.density_range[attrs["style"]]
                out["style_adherence"][i] = float(low <= stats["density"][i] <= high)
        has_target = ~np.isnan(texture_target)
        out["texture_adherence"][has_target] = (stats["active_voices"] == texture_target)[has_target]
        for meter in {a["meter"] for a in attributes if a["meter"] in self.meter_reference}:
            rows = np.array([a["meter"] == meter for a in attributes])
            (low, high), threshold = self.meter_reference[meter]
            out["strong_beat"][rows] = strong_beat_weight(stats["onset_weights"][rows], meter)
            out["periodicity"][rows] = bar_periodicity(stats["onset_weights"][rows], meter)
            out["meter_adherence"][rows] = ((out["strong_beat"][rows] >= low) & (out["strong_beat"][rows] <= high)
                                            & (out["periodicity"][rows] >= threshold))
        text = self.scorer.embed_prompts(list(prompts))  # [N, D]
        similarity = (text * self.embed_codes(codes)).sum(-1)
        reference = text @ self.test_embeddings.T  # [N, test]
        out["text_similarity"] = similarity.astype(float)
        out["text_match"] = (reference < similarity[:, None]).mean(-1)
        out["realism_distance"] = self.realism_distance(stats, [a["style"] for a in attributes])
        out["realism"] = np.exp(-out["realism_distance"])
        parts = np.stack([out[name] for name in QUALITY_PARTS])
        out["quality"] = np.nanmean(parts, axis=0)  # text_match and realism are never NaN
        out.update({name: stats[name] for name in ("onsets", "active_voices", *REALISM_FEATURES)})
        return out

    def distribution_distance(self, codes: np.ndarray, prompts: list[str]) -> float:
        """FAD-style distance (module docstring) between samples codes [N, 4, T] and the real test
        segments, the latter reweighted to the style mix of the prompts [N] (a prompt without a style
        spreads its share over all test segments)."""
        if len(prompts) != len(codes):
            raise UserError(f"got {len(prompts)} prompts for {len(codes)} code sequences")
        if len(codes) < 2:
            raise UserError("the distribution distance needs at least 2 samples")
        weights = np.zeros(len(self.test_codes))
        for prompt in prompts:
            style = prompt_attributes(prompt)["style"]
            rows = self.test_styles == style
            rows = rows if rows.any() else np.ones(len(rows), bool)
            weights[rows] += 1.0 / rows.sum()
        return frechet_distance(*weighted_gaussian(self.embed_codes(codes).astype(np.float64)),
                                *weighted_gaussian(self.test_embeddings.astype(np.float64), weights))
