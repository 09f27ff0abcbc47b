"""What an embedder's distances follow: rank correlations with note-level distances and controlled edits.

Library module; `musicgen-cfg embedder check SPEC` (musicgen_cfg/experiments/embedder_check.py) runs it on
any embedder spec the project knows and writes bench/results/embedder_check_<label>.json.

The diversity reward compares sibling generations of ONE prompt, so the check does too: real segments of
the default world's test split, grouped by style (`select_style_groups`), every segment of a style
cropped to the same length and rendered under one prompt, the style's first listed instrument at its
usual tempo (`style_prompt`: "organ at 76 bpm" for chorales). Then:

- correlations: for every pair within a style, the embedder distance 1 - cos against the note-level
  distances of rl/note_diversity.py (total variation of the pitch-class, interval and rhythm
  histograms), |onset-count difference| and |active-voice-count difference| (voices with at least one
  onset); Spearman's rho (`spearman`), pooled over all within-style pairs and per style.
- edits (`EDITS`): the mean distance between a segment's rendering and that of an edited copy:
  transpose +2 and +7 semitones, rotate by one 4/4 bar (`rotate_codes`), the top voice swapped for the
  next segment's of the style (`swap_melody`), every other onset of the lower voices (of the melody
  when it is alone) removed (`thin_density`); references: different segments of the style
  (`same_style`) and a second rendering of the same codes (`rerender`, 0 for a deterministic codec
  and embedder).
A note-hearing embedder moves under transposition (pitch classes change, intervals do not) and a
melody swap, little under the rotation (the same notes), and a texture-hearing one under thinning.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from musicgen_cfg.errors import UserError
from musicgen_cfg.world import symbolic
from rl.note_diversity import FEATURES, total_variation

# (codes [N, 4, T], prompt) -> float32 waveforms [N, S]; and (codes [N, 4, T], waveforms [N, S]) -> unit [N, D].
Render = Callable[[np.ndarray, str], object]
Embed = Callable[[np.ndarray, object], np.ndarray]

BAR_FRAMES = 16  # one 4/4 bar of 16ths: the rotation's shift, whatever the piece's meter
MIN_ONSETS_PER_FRAME = 1 / 8  # fewer onsets than one per two beats: a near-silent crop, skipped
PAIR_MEASURES = (*FEATURES, "onset_count", "active_voices")  # what the embedder distance is ranked against


@dataclass
class StyleGroup:
    """The crops of one style, all rendered under one prompt."""

    style: str
    prompt: str
    codes: np.ndarray  # int64 [G >= 2, 4, T], one crop length per group


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0 .. n-1 of values [n]; tied values share the mean of their ranks: float64 [n]."""
    values = np.asarray(values, dtype=np.float64)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, tie_group = np.unique(values, return_inverse=True)
    return (np.bincount(tie_group, ranks) / np.bincount(tie_group))[tie_group]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho of x [n] and y [n]: the Pearson correlation of their average ranks, in [-1, 1].

    0.0 when either is constant (or n < 2): no order to follow, so no evidence of a relation.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected two vectors of one length, got {x.shape} and {y.shape}")
    rx, ry = average_ranks(x) - (len(x) - 1) / 2, average_ranks(y) - (len(y) - 1) / 2
    scale = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / scale) if scale > 0 else 0.0


# ------------------------------------------------------------------------------------------- edits

def transposed(semitones: int) -> Callable[[np.ndarray, int], np.ndarray | None]:
    """Edit: segment i of codes [G, 4, T] shifted by `semitones`; None when a note would leave the range."""

    def edit(codes: np.ndarray, i: int) -> np.ndarray | None:
        lowest, highest = symbolic.transposition_range(codes[i])
        return symbolic.transpose_codes(codes[i], semitones) if lowest <= semitones <= highest else None

    return edit


def rotate_codes(codes: np.ndarray, frames: int = BAR_FRAMES) -> np.ndarray:
    """codes [4, T] (T > frames) circularly shifted left by `frames`, the same notes: [4, T].

    HOLD tokens stay valid: a HOLD landing at the new first frame becomes the onset of the note it
    continues (a rest when nothing sounds there), and a HOLD in the old first frame (a rest there) stays
    a rest where it lands, instead of continuing the note before it.
    """
    num_frames = codes.shape[-1]
    if not 0 < frames < num_frames:
        raise ValueError(f"cannot rotate {num_frames} frames by {frames}")
    rotated = np.roll(codes, -frames, axis=-1)
    for voice, line in enumerate(codes):
        if line[frames] == symbolic.HOLD:
            struck = np.flatnonzero(line[:frames] != symbolic.HOLD)
            token = line[struck[-1]] if len(struck) else symbolic.REST
            rotated[voice, 0] = token if token >= 2 else symbolic.REST
        if line[0] == symbolic.HOLD:
            rotated[voice, num_frames - frames] = symbolic.REST
    return rotated


def rotate_bar(codes: np.ndarray, i: int) -> np.ndarray:
    """Edit: segment i of codes [G, 4, T] rotated by one 4/4 bar (rotate_codes)."""
    return rotate_codes(codes[i])


def swap_melody(codes: np.ndarray, i: int) -> np.ndarray:
    """Edit: segment i with its top voice replaced by the next segment's of the group (codes [G, 4, T])."""
    edited = codes[i].copy()
    edited[0] = codes[(i + 1) % len(codes)][0]
    return edited


def thin_density(codes: np.ndarray, i: int) -> np.ndarray | None:
    """Edit: every other onset (the 2nd, 4th, ...) of each lower voice of segment i becomes a rest (its
    HOLDs then rest too); of the top voice instead when the lower ones have fewer than two onsets (a solo
    melody). None when no voice has two onsets."""
    edited = codes[i].copy()
    lower_onsets = (edited[1:] >= 2).sum(axis=1)
    for line in edited[1:] if (lower_onsets >= 2).any() else edited[:1]:
        line[np.flatnonzero(line >= 2)[1::2]] = symbolic.REST
    return None if np.array_equal(edited, codes[i]) else edited


EDITS = {
    "transpose_2": transposed(2),
    "transpose_7": transposed(7),
    "rotate_bar": rotate_bar,
    "swap_melody": swap_melody,
    "thin_density": thin_density,
}


# -------------------------------------------------------------------------------------- the segments

def style_prompt(style: str) -> str:
    """The one prompt a style's segments are rendered with: its first listed instrument at its usual tempo."""
    from musicgen_cfg.world.captions import DEFAULT_BPM, DEFAULT_INSTRUMENT, STYLES

    known = STYLES.get(style)
    instrument, bpm = (known.instruments[0], known.tempo_bpm) if known else (DEFAULT_INSTRUMENT, DEFAULT_BPM)
    return f"{instrument} at {bpm:.0f} bpm"


def select_style_groups(dataset, segments: int, crop_seconds: float, seed: int) -> list[StyleGroup]:
    """Up to `segments` crops of a corpus.SegmentDataset, spread evenly over its styles.

    Per style: segments drawn in a seeded random order, distinct pieces first; each cropped at a random
    start to crop_seconds at the style prompt's tempo (at most the whole segment), near-silent crops
    skipped. Styles with fewer than 2 crops are left out; UserError when none is left.
    """
    from musicgen_cfg.world.codec import SymbolicCodec

    styles = sorted(set(map(str, dataset.styles)))
    if segments < 2 * len(styles):
        raise UserError(f"--segments {segments} is fewer than 2 for each of the {len(styles)} styles; "
                        f"use at least {2 * len(styles)}")
    codec, pieces, groups = SymbolicCodec(), dataset.arrays["segment_piece"][dataset.rows], []
    for number, style in enumerate(styles):
        quota = segments // len(styles) + (number < segments % len(styles))
        prompt, rng = style_prompt(style), random.Random(f"{seed}-{style}")
        rows = [int(i) for i in np.flatnonzero(dataset.styles == style)]
        rng.shuffle(rows)
        seen, occurrence = Counter(), []  # occurrence: how many earlier rows come from the same piece
        for piece in pieces[rows]:
            occurrence.append(seen[piece])
            seen[piece] += 1
        rows = [row for _, row in sorted(zip(occurrence, rows), key=lambda pair: pair[0])]  # distinct pieces first
        crops = []
        for row in rows:
            codes = dataset.codes([row])[0].astype(np.int64)
            frames = min(codes.shape[1], codec.frames_for_duration(crop_seconds, prompt))
            if frames <= BAR_FRAMES:
                raise UserError(f"--crop-seconds {crop_seconds} gives {frames} frames at {prompt}: need more "
                                f"than one bar ({BAR_FRAMES}) to rotate")
            start = rng.randrange(codes.shape[1] - frames + 1)
            crop = codes[:, start : start + frames]
            if (crop >= 2).sum() >= MIN_ONSETS_PER_FRAME * frames:
                crops.append(crop)
            if len(crops) == quota:
                break
        if len(crops) >= 2:
            groups.append(StyleGroup(style, prompt, np.stack(crops)))
    if not groups:
        raise UserError("no style of the dataset has 2 crops with notes: nothing to compare")
    return groups


# ------------------------------------------------------------------------------------- measurement

def pair_measures(codes: np.ndarray) -> dict[str, np.ndarray]:
    """Note-level distances of all pairs of codes [G, 4, T]: name (PAIR_MEASURES) -> [G, G]."""
    onsets = (codes >= 2).sum(axis=(1, 2)).astype(np.float64)
    voices = (codes >= 2).any(axis=2).sum(axis=1).astype(np.float64)
    measures = {name: total_variation(np.stack([feature(c) for c in codes])) for name, feature in FEATURES.items()}
    measures["onset_count"] = np.abs(onsets[:, None] - onsets[None, :])
    measures["active_voices"] = np.abs(voices[:, None] - voices[None, :])
    return measures


def cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - cos of unit vectors a [N, D] and b [M, D]: [N, M] in [0, 2] (rounding errors clipped)."""
    return np.clip(1.0 - np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64).T, 0.0, 2.0)


def check_embedder(groups: list[StyleGroup], render: Render, embed: Embed) -> dict:
    """The measurements of the module docstring.

    render(codes [N, 4, T], prompt) -> waveforms [N, S]; embed(codes [N, 4, T], waveforms [N, S]) -> unit
    vectors [N, D] (an audio embedder reads the waveforms, a code embedder the codes). Returns
    {"correlations": {"pooled": {measure: rho}, "per_style": {style: {measure: rho}}},
     "num_pairs": {"pooled": n, style: n}, "distances": {name: {"mean": float | None, "num_pairs": n}}}
    where the distances are "same_style" (over the within-style pairs), "rerender" and one per EDITS entry
    (over the (original, edited) pairs of the segments it applies to; None: none).
    """
    pooled = {name: [] for name in ("embedder", *PAIR_MEASURES)}
    per_style, num_pairs = {}, {}
    edit_distances = {name: [] for name in ("rerender", *EDITS)}
    for group in groups:
        vectors = embed(group.codes, render(group.codes, group.prompt))
        upper = np.triu_indices(len(group.codes), k=1)
        pairs = {"embedder": cosine_distance(vectors, vectors)[upper],
                 **{name: values[upper] for name, values in pair_measures(group.codes).items()}}
        per_style[group.style] = {name: spearman(pairs["embedder"], pairs[name]) for name in PAIR_MEASURES}
        num_pairs[group.style] = len(upper[0])
        for name, values in pairs.items():
            pooled[name].append(values)
        for name, edit in {"rerender": lambda codes, i: codes[i], **EDITS}.items():
            rows, edited = [], []
            for i in range(len(group.codes)):
                codes = edit(group.codes, i)
                if codes is not None:
                    rows.append(i)
                    edited.append(codes)
            if rows:
                edited = np.stack(edited)
                changed = embed(edited, render(edited, group.prompt))
                edit_distances[name].append(np.diag(cosine_distance(vectors[rows], changed)))
    pooled = {name: np.concatenate(values) for name, values in pooled.items()}
    distances = {"same_style": {"mean": float(pooled["embedder"].mean()), "num_pairs": len(pooled["embedder"])}}
    for name, values in edit_distances.items():
        values = np.concatenate(values) if values else np.zeros(0)
        distances[name] = {"mean": float(values.mean()) if len(values) else None, "num_pairs": len(values)}
    return {
        "correlations": {"pooled": {name: spearman(pooled["embedder"], pooled[name]) for name in PAIR_MEASURES},
                         "per_style": per_style},
        "num_pairs": {"pooled": len(pooled["embedder"]), **num_pairs},
        "distances": distances,
    }
