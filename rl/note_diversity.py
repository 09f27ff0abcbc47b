"""Note-level diversity of the default world: how different a prompt's samples are as notes, not as audio.

Library module; `musicgen-cfg evaluate` reports these measures for default-world runs (beside the reward
and held-out embedders) and `musicgen-cfg reproduce` plots and checks them (claim 7).

Each sample's codes [4, T] (the token format of `musicgen_cfg.world.symbolic`) are read as notes and summarised
by three normalised histograms (`FEATURES`):

- pitch_class: the note onsets' pitch classes (12 bins, C .. B), all voices.
- interval:    each voice's melodic intervals between consecutive notes, in semitones clipped to
               [-12, 12] (25 bins): contour and step/leap profile.
- rhythm:      the inter-onset intervals of the texture (onset frames of any voice), in 16ths clipped
               to [1, 16] (16 bins): the rhythmic values, independent of where the bar lines fall.

Every histogram has one more bin, "nothing to count" (no notes, one note, ...), which holds all the mass
when the sample has no such event, so every sample has a proper distribution. The distance of two
samples is the total variation 1/2 |p - q|_1 in [0, 1] (0 = same profile, 1 = disjoint supports); its
complement sum_b min(p_b, q_b) (histogram intersection, positive semi-definite) is the similarity of the
Vendi score. Degenerate samples (the reward gate of `rl/reward.py`) earn nothing: a pair with one
counts as distance 0, and the Vendi score counts the music samples only (0 when there is none).
"""

from __future__ import annotations

import numpy as np

from musicgen_cfg.world import symbolic
from rl.diversity import vendi_from_similarity

MAX_INTERVAL = 12  # semitones; larger leaps share the outermost bins
MAX_IOI = 16  # frames (one 4/4 bar); longer gaps share the last bin


def sounding_frames(codes: np.ndarray) -> np.ndarray:
    """codes [..., T] -> bool [..., T]: a note sounds in the voice at that frame.

    A frame sounds when the last token at or before it that is not HOLD is an onset (HOLD after a
    REST, or in the first frame, is a rest, as in `symbolic.codes_to_notes`).
    """
    codes = np.asarray(codes)
    frames = np.arange(codes.shape[-1])
    last = np.maximum.accumulate(np.where(codes != symbolic.HOLD, frames, -1), axis=-1)
    token = np.take_along_axis(codes, np.maximum(last, 0), axis=-1)
    return (last >= 0) & (token >= 2)


def _histogram(values: np.ndarray, low: int, high: int) -> np.ndarray:
    """Normalised counts of integer `values` clipped to [low, high], plus the final "nothing" bin: [high - low + 2]."""
    counts = np.zeros(high - low + 2)
    if len(values) == 0:
        counts[-1] = 1.0
        return counts
    np.add.at(counts, np.clip(values, low, high) - low, 1.0)
    return counts / counts.sum()


def pitch_class_histogram(codes: np.ndarray) -> np.ndarray:
    """codes [4, T] -> [13]: pitch classes of the onsets (C = bin 0), last bin = no onset."""
    onsets = np.asarray(codes)[np.asarray(codes) >= 2]
    pitches = onsets.astype(np.int64) - 2 + symbolic.LOWEST_PITCH
    return _histogram(pitches % 12, 0, 11)


def interval_histogram(codes: np.ndarray) -> np.ndarray:
    """codes [4, T] -> [26]: melodic intervals within each voice, -12 .. +12 semitones, last bin = none."""
    by_voice: dict[int, list[int]] = {}
    for event in symbolic.codes_to_notes(codes):  # sorted by onset
        by_voice.setdefault(event.voice, []).append(event.pitch)
    intervals = np.concatenate([np.diff(p) for p in by_voice.values()] or [np.zeros(0, np.int64)])
    return _histogram(intervals.astype(np.int64), -MAX_INTERVAL, MAX_INTERVAL)


def rhythm_histogram(codes: np.ndarray) -> np.ndarray:
    """codes [4, T] -> [17]: inter-onset intervals 1 .. 16 frames of the texture, last bin = fewer than 2 onsets."""
    onset_frames = np.flatnonzero((np.asarray(codes) >= 2).any(axis=0))
    return _histogram(np.diff(onset_frames), 1, MAX_IOI)


FEATURES = {"pitch_class": pitch_class_histogram, "interval": interval_histogram, "rhythm": rhythm_histogram}


def total_variation(histograms: np.ndarray) -> np.ndarray:
    """Pairwise total-variation distances of normalised histograms [G, B] -> [G, G] in [0, 1]."""
    h = np.asarray(histograms, dtype=np.float64)
    return 0.5 * np.abs(h[:, None, :] - h[None, :, :]).sum(axis=-1)


def group_note_diversity(codes: np.ndarray, music: np.ndarray | None = None) -> dict[str, float]:
    """One prompt's samples, codes [G >= 2, 4, T], music bool [G] (None = all) -> note-level measures.

    Returns {f"note_distance_{f}": mean pairwise total variation (pairs with a degenerate sample
    count 0), f"note_vendi_{f}": Vendi score of the music samples} for f in FEATURES, and
    "note_diversity": the mean of the three distances.
    """
    codes = np.asarray(codes)
    if codes.ndim != 3 or codes.shape[0] < 2:
        raise ValueError(f"expected codes [G >= 2, K, T], got {codes.shape}")
    group = codes.shape[0]
    music = np.ones(group, dtype=bool) if music is None else np.asarray(music, dtype=bool)
    if music.shape != (group,):
        raise ValueError(f"music mask must be [{group}], got {music.shape}")
    pairs = np.outer(music, music) & ~np.eye(group, dtype=bool)
    result = {}
    for name, feature in FEATURES.items():
        distance = total_variation(np.stack([feature(c) for c in codes]))
        result[f"note_distance_{name}"] = float((distance * pairs).sum() / (group * (group - 1)))
        kept = distance[np.ix_(music, music)]
        result[f"note_vendi_{name}"] = vendi_from_similarity(1.0 - kept) if music.any() else 0.0
    result["note_diversity"] = float(np.mean([result[f"note_distance_{name}"] for name in FEATURES]))
    return result
