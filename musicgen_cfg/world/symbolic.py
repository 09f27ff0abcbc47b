"""The token format of the default model: 4 voices x 16th-note frames, and conversions to and from it.

Library module (no command). The dataset (`musicgen-cfg corpus build`) and the symbolic codec use it.

Token spec (one codebook per voice, K = 4, soprano to bass; one frame = one 16th note):
- 0 = REST: nothing sounds in this voice.
- 1 = HOLD: the note sounding in the previous frame goes on. A HOLD after a REST (or in the first frame)
  has nothing to hold and is read as a REST, so any code sequence is a valid piece.
- 2 + (p - LOWEST_PITCH) = a new note (onset) of MIDI pitch p, LOWEST_PITCH <= p <= HIGHEST_PITCH
  (MIDI 36 = C2 .. 97 = C#7), so the per-voice cardinality is 64.

Reduction of a score to that grid (`score_to_codes`):
- Onsets and ends are rounded to the nearest 16th; a note lasts at least one frame and ends at the next
  onset of its voice. Grace notes and chord symbols are dropped; tied notes become one long note.
- Chords within a part, and several notes starting in the same frame of a part: the top note is kept.
- Pitches outside the range are moved by octaves into it.
- Parts are ordered by mean pitch (highest first). With n <= 4 parts, part j goes to voice
  round(3 j / (n - 1)): a solo melody is voice 0 (other voices rest), two parts are voices 0 and 3,
  three parts are voices 0, 2, 3. With n > 4 parts, the parts at ranks round(j (n - 1) / 3), j = 0..3 are
  kept: the highest, the lowest, and two inner parts evenly spaced between them by mean pitch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from musicgen_cfg.errors import UserError

NUM_VOICES = 4
FRAMES_PER_QUARTER = 4
REST = 0
HOLD = 1
LOWEST_PITCH = 36
HIGHEST_PITCH = 97
CARDINALITY = 2 + HIGHEST_PITCH - LOWEST_PITCH + 1  # 64
VOICE_NAMES = ("soprano", "alto", "tenor", "bass")


class NoteEvent(NamedTuple):
    """One note of a 4-voice piece, in frames (16th notes)."""

    voice: int
    onset: int
    duration: int
    pitch: int


def pitch_to_token(pitch: int) -> int:
    """MIDI pitch -> onset token; raises ValueError outside [LOWEST_PITCH, HIGHEST_PITCH]."""
    if not LOWEST_PITCH <= pitch <= HIGHEST_PITCH:
        raise ValueError(f"pitch {pitch} outside {LOWEST_PITCH}..{HIGHEST_PITCH}")
    return 2 + pitch - LOWEST_PITCH


def token_to_pitch(token: int) -> int:
    """Onset token (>= 2) -> MIDI pitch."""
    return int(token) - 2 + LOWEST_PITCH


def fold_into_range(pitch: int) -> int:
    """Move a MIDI pitch by whole octaves into [LOWEST_PITCH, HIGHEST_PITCH]."""
    while pitch < LOWEST_PITCH:
        pitch += 12
    while pitch > HIGHEST_PITCH:
        pitch -= 12
    return pitch


def line_from_notes(notes: list[tuple[int, int, int, bool]], num_frames: int) -> np.ndarray:
    """One voice's tokens from its notes.

    notes: (onset_frame, end_frame, midi_pitch, tied_to_previous) in any order; pitches must be in range.
    Returns uint8 [T]. In each onset frame the highest note wins; a note is cut at the next onset.
    A tied note of the same pitch that starts where the sounding note ends continues it (HOLD).
    """
    top_note_at: dict[int, tuple[int, int, bool]] = {}
    for onset, end, pitch, tied in notes:
        if 0 <= onset < num_frames and (onset not in top_note_at or pitch > top_note_at[onset][1]):
            top_note_at[onset] = (end, pitch, tied)
    line = np.full(num_frames, REST, dtype=np.uint8)
    onsets = sorted(top_note_at)
    previous_pitch, previous_end = None, -1
    for i, onset in enumerate(onsets):
        end, pitch, tied = top_note_at[onset]
        next_onset = onsets[i + 1] if i + 1 < len(onsets) else num_frames
        end = min(max(end, onset + 1), next_onset)
        continues = tied and pitch == previous_pitch and previous_end == onset
        line[onset] = HOLD if continues else pitch_to_token(pitch)
        line[onset + 1 : end] = HOLD
        previous_pitch, previous_end = pitch, end
    return line


def notes_to_codes(events: list[NoteEvent], num_frames: int) -> np.ndarray:
    """NoteEvents -> codes uint8 [4, T] (same reduction rules as a score part per voice)."""
    codes = np.full((NUM_VOICES, num_frames), REST, dtype=np.uint8)
    for voice in range(NUM_VOICES):
        notes = [(e.onset, e.onset + e.duration, e.pitch, False) for e in events if e.voice == voice]
        codes[voice] = line_from_notes(notes, num_frames)
    return codes


def codes_to_notes(codes: np.ndarray) -> list[NoteEvent]:
    """Codes [4, T] (any values in [0, CARDINALITY)) -> NoteEvents sorted by (onset, voice).

    HOLD with nothing sounding is a rest, so generated sequences always decode.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [K, T], got shape {codes.shape}")
    events = []
    for voice, line in enumerate(codes):
        onset, pitch = None, None
        for frame, token in enumerate(line.tolist()):
            if token == HOLD and pitch is not None:
                continue
            if pitch is not None:
                events.append(NoteEvent(voice, onset, frame - onset, pitch))
            onset, pitch = (frame, token_to_pitch(token)) if token >= 2 else (None, None)
        if pitch is not None:
            events.append(NoteEvent(voice, onset, len(line) - onset, pitch))
    return sorted(events, key=lambda e: (e.onset, e.voice))


def shorten_note_values(codes: np.ndarray, factor: int) -> np.ndarray:
    """Divide every onset and duration of codes [4, T] by `factor` (rounded, >= 1 frame): [4, ceil(T / factor)].

    Used for scores notated in half- or whole-note beats, as modern editions halve old note values.
    Notes that land in the same frame follow the usual rule (the highest wins).
    """
    if factor == 1:
        return codes
    num_frames = -(-codes.shape[1] // factor)
    scaled = [NoteEvent(e.voice, _frame(e.onset / factor / FRAMES_PER_QUARTER),
                        max(1, _frame(e.duration / factor / FRAMES_PER_QUARTER)), e.pitch)
              for e in codes_to_notes(codes)]
    return notes_to_codes(scaled, num_frames)


def transposition_range(codes: np.ndarray) -> tuple[int, int]:
    """(lowest, highest) semitone shift that keeps every onset of codes [..., T] in range."""
    onsets = codes[codes >= 2]
    if onsets.size == 0:
        return (-(HIGHEST_PITCH - LOWEST_PITCH), HIGHEST_PITCH - LOWEST_PITCH)
    return (2 - int(onsets.min()), CARDINALITY - 1 - int(onsets.max()))


def transpose_codes(codes: np.ndarray, semitones: int) -> np.ndarray:
    """Shift every onset of codes [..., T] by `semitones`; UserError when a note would leave the range."""
    lowest, highest = transposition_range(codes)
    if not lowest <= semitones <= highest:
        raise UserError(f"transposing by {semitones} semitones leaves the pitch range (allowed {lowest}..{highest})")
    shifted = codes.astype(np.int16)
    shifted[codes >= 2] += semitones
    return shifted.astype(codes.dtype)


def voice_slots(num_parts: int) -> list[tuple[int, int]]:
    """(part rank by mean pitch, voice) pairs for a piece with num_parts parts (see module docstring)."""
    if num_parts <= 0:
        return []
    if num_parts == 1:
        return [(0, 0)]
    if num_parts <= NUM_VOICES:
        return [(j, round(j * (NUM_VOICES - 1) / (num_parts - 1))) for j in range(num_parts)]
    return [(round(j * (num_parts - 1) / (NUM_VOICES - 1)), j) for j in range(NUM_VOICES)]


def _frame(quarter_length: float) -> int:
    # Round half up (not to even) so a note at x.5 frames lands in the same place whatever x is.
    return int(math.floor(float(quarter_length) * FRAMES_PER_QUARTER + 0.5))


def part_notes(part) -> list[tuple[int, int, int, bool]]:
    """A music21 part -> (onset_frame, end_frame, midi_pitch, tied_to_previous), top note of chords."""
    from music21 import chord, harmony, note

    notes = []
    for element in part.flatten().notes:
        if isinstance(element, harmony.Harmony) or element.duration.quarterLength <= 0:
            continue
        if isinstance(element, chord.Chord):
            pitches = [p.midi for p in element.pitches]
            if not pitches:
                continue
            midi = max(pitches)
        elif isinstance(element, note.Note):
            midi = element.pitch.midi
        else:
            continue  # unpitched percussion
        onset = _frame(element.offset)
        end = _frame(element.offset + element.duration.quarterLength)
        tied = element.tie is not None and element.tie.type in ("stop", "continue")
        notes.append((onset, end, fold_into_range(midi), tied))
    return notes


def score_to_codes(score) -> tuple[np.ndarray, int]:
    """A music21 Score (or a single-part stream) -> (codes uint8 [4, T], number of non-empty parts).

    T covers the last note's end. Parts without notes are ignored before voices are assigned.
    """
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    part_note_lists = [notes for notes in (part_notes(p) for p in parts) if notes]
    if not part_note_lists:
        return np.zeros((NUM_VOICES, 0), dtype=np.uint8), 0
    by_mean_pitch = sorted(part_note_lists, key=lambda notes: -float(np.mean([n[2] for n in notes])))
    num_frames = max(max(end, onset + 1) for notes in part_note_lists for onset, end, _, _ in notes)
    codes = np.full((NUM_VOICES, num_frames), REST, dtype=np.uint8)
    for rank, voice in voice_slots(len(by_mean_pitch)):
        codes[voice] = line_from_notes(by_mean_pitch[rank], num_frames)
    return codes, len(by_mean_pitch)
