"""Token format: score -> codes -> notes on a known chorale, transposition, invariants. `pytest tests/world/test_symbolic.py`"""

import numpy as np
import pytest
from music21 import chord, corpus, note, stream, tie

from musicgen_cfg.errors import UserError
from musicgen_cfg.world import symbolic
from musicgen_cfg.world.symbolic import HOLD, REST, NoteEvent


@pytest.fixture(scope="module")
def chorale():
    score = corpus.parse("bach/bwv66.6")
    codes, num_parts = symbolic.score_to_codes(score)
    return score, codes, num_parts


def test_chorale_shape_and_vocabulary(chorale):
    score, codes, num_parts = chorale
    assert num_parts == 4
    assert codes.dtype == np.uint8
    assert codes.shape == (4, int(score.highestTime * symbolic.FRAMES_PER_QUARTER))
    assert codes.max() < symbolic.CARDINALITY
    # The soprano opens on C#5 (MIDI 73) for an eighth note, then B4.
    assert codes[0, :3].tolist() == [symbolic.pitch_to_token(73), HOLD, symbolic.pitch_to_token(71)]


def test_chorale_notes_match_the_score(chorale):
    score, codes, _ = chorale
    events = symbolic.codes_to_notes(codes)
    for voice, part in enumerate(score.parts):  # bwv66.6 lists S, A, T, B from the top
        expected = [(round(n.offset * 4), round(n.quarterLength * 4), n.pitch.midi)
                    for n in part.stripTies().flatten().notes]
        got = [(e.onset, e.duration, e.pitch) for e in events if e.voice == voice]
        assert got == expected


def test_codes_notes_roundtrip(chorale):
    _, codes, _ = chorale
    assert np.array_equal(symbolic.notes_to_codes(symbolic.codes_to_notes(codes), codes.shape[1]), codes)


def test_any_code_sequence_decodes_and_orphan_holds_are_rests():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, symbolic.CARDINALITY, size=(4, 64)).astype(np.uint8)
    codes[:, 0] = HOLD  # a generated sequence may start with HOLD
    events = symbolic.codes_to_notes(codes)
    assert all(e.onset >= 1 and e.duration >= 1 for e in events)
    canonical = symbolic.notes_to_codes(events, 64)
    orphan = (codes == HOLD) & (canonical == REST)
    assert np.array_equal(np.where(orphan, REST, codes), canonical)


def test_transposition_shifts_onsets_only(chorale):
    _, codes, _ = chorale
    up = symbolic.transpose_codes(codes, 3)
    onsets = codes >= 2
    assert np.array_equal(up[onsets], codes[onsets] + 3)
    assert np.array_equal(up[~onsets], codes[~onsets])
    assert np.array_equal(symbolic.transpose_codes(up, -3), codes)


def test_transposition_out_of_range_raises():
    codes = np.array([[symbolic.pitch_to_token(95), HOLD], [REST, symbolic.pitch_to_token(40)]], np.uint8)
    assert symbolic.transposition_range(codes) == (-4, 2)
    symbolic.transpose_codes(codes, 2)
    with pytest.raises(UserError, match="range"):
        symbolic.transpose_codes(codes, 3)
    with pytest.raises(UserError, match="range"):
        symbolic.transpose_codes(codes, -5)


@pytest.mark.parametrize("num_parts, voices", [(1, [0]), (2, [0, 3]), (3, [0, 2, 3]), (4, [0, 1, 2, 3])])
def test_few_parts_are_spread_from_soprano_to_bass(num_parts, voices):
    assert [v for _, v in symbolic.voice_slots(num_parts)] == voices
    assert [rank for rank, _ in symbolic.voice_slots(num_parts)] == list(range(num_parts))


@pytest.mark.parametrize("num_parts, ranks", [(5, [0, 1, 3, 4]), (6, [0, 2, 3, 5]), (8, [0, 2, 5, 7])])
def test_many_parts_keep_outer_and_two_inner(num_parts, ranks):
    assert symbolic.voice_slots(num_parts) == list(zip(ranks, range(4)))


def _part(*elements):
    part = stream.Part()
    for element in elements:
        part.append(element)
    return part


def test_monophonic_tune_goes_to_voice_zero_and_chords_keep_top_note():
    tune = _part(note.Note("C4", quarterLength=1), chord.Chord(["E4", "G4", "C5"], quarterLength=0.5),
                 note.Rest(quarterLength=0.5), note.Note("D4", quarterLength=1))
    codes, num_parts = symbolic.score_to_codes(stream.Score([tune]))
    assert num_parts == 1
    assert codes[0].tolist() == [symbolic.pitch_to_token(60), HOLD, HOLD, HOLD, symbolic.pitch_to_token(72), HOLD,
                                 REST, REST, symbolic.pitch_to_token(62), HOLD, HOLD, HOLD]
    assert (codes[1:] == REST).all()


def test_ties_merge_and_out_of_range_pitches_fold_by_octaves():
    first, second = note.Note("C1", quarterLength=1), note.Note("C1", quarterLength=1)
    first.tie, second.tie = tie.Tie("start"), tie.Tie("stop")
    codes, _ = symbolic.score_to_codes(stream.Score([_part(first, second)]))
    assert codes[0].tolist() == [symbolic.pitch_to_token(36)] + [HOLD] * 7  # C1 (24) -> C2 (36), one note


def test_same_frame_onsets_keep_the_highest_and_notes_stop_at_next_onset():
    line = symbolic.line_from_notes([(0, 4, 60, False), (0, 4, 67, False), (2, 3, 64, False)], 5)
    assert line.tolist() == [symbolic.pitch_to_token(67), HOLD, symbolic.pitch_to_token(64), REST, REST]


def test_notes_to_codes_matches_events():
    events = [NoteEvent(0, 0, 2, 72), NoteEvent(3, 1, 3, 36), NoteEvent(1, 4, 1, 97)]
    codes = symbolic.notes_to_codes(events, 6)
    assert symbolic.codes_to_notes(codes) == sorted(events, key=lambda e: (e.onset, e.voice))
    with pytest.raises(ValueError):
        symbolic.pitch_to_token(98)


def test_shorten_note_values_halves_onsets_and_durations():
    events = [NoteEvent(0, 0, 8, 67), NoteEvent(0, 8, 4, 69), NoteEvent(3, 4, 12, 43)]
    halved = symbolic.shorten_note_values(symbolic.notes_to_codes(events, 17), 2)
    assert halved.shape == (4, 9)
    assert symbolic.codes_to_notes(halved) == [NoteEvent(0, 0, 4, 67), NoteEvent(3, 2, 6, 43), NoteEvent(0, 4, 2, 69)]
