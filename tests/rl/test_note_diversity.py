"""Note-level diversity (rl/note_diversity.py): histograms, distances and Vendi scores."""

import numpy as np
import pytest

from musicgen_cfg.world import symbolic
from rl.diversity import vendi_from_similarity
from rl.note_diversity import (
    FEATURES,
    group_note_diversity,
    interval_histogram,
    pitch_class_histogram,
    rhythm_histogram,
    sounding_frames,
    total_variation,
)


def repeated(pitches, every, frames=16, voice=0):
    """codes [4, frames]: `pitches` cycled, one onset every `every` frames in `voice`, held until the next."""
    events = [symbolic.NoteEvent(voice, onset, every, pitches[i % len(pitches)])
              for i, onset in enumerate(range(0, frames, every))]
    return symbolic.notes_to_codes(events, frames).astype(np.int64)


C_QUARTERS = repeated([60], 4)  # C C C C
G_EIGHTHS = repeated([67], 2)  # G x 8
C_G_QUARTERS = repeated([60, 67], 4)  # C G C G
SILENT = np.zeros((4, 16), dtype=np.int64)


def test_histograms_known_values():
    assert pitch_class_histogram(C_QUARTERS)[0] == 1 and pitch_class_histogram(G_EIGHTHS)[7] == 1
    assert pitch_class_histogram(C_G_QUARTERS)[[0, 7]].tolist() == [0.5, 0.5]
    intervals = interval_histogram(C_G_QUARTERS)  # +7, -7, +7 in bins 12 + 7 and 12 - 7
    assert intervals[19] == pytest.approx(2 / 3) and intervals[5] == pytest.approx(1 / 3)
    assert rhythm_histogram(C_QUARTERS)[3] == 1 and rhythm_histogram(G_EIGHTHS)[1] == 1  # IOI 4 and 2 frames
    for feature in FEATURES.values():  # nothing to count: all mass in the last bin
        assert feature(SILENT)[-1] == 1 and feature(SILENT).sum() == 1


def test_histograms_are_distributions_and_transposition_moves_only_pitch_classes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        codes = rng.integers(0, 40, size=(4, 24))  # onsets 2..39 stay in range after +5
        for feature in FEATURES.values():
            h = feature(codes)
            assert h.min() >= 0 and h.sum() == pytest.approx(1.0)
        up = symbolic.transpose_codes(codes, 5)
        assert np.allclose(interval_histogram(up), interval_histogram(codes))
        assert np.allclose(rhythm_histogram(up), rhythm_histogram(codes))
        assert np.allclose(pitch_class_histogram(up)[:12], np.roll(pitch_class_histogram(codes)[:12], 5))


def test_sounding_frames_match_the_decoded_notes():
    rng = np.random.default_rng(1)
    for _ in range(20):
        codes = rng.choice([0, 1, 1, 1, 20, 30], size=(4, 20))
        expected = np.zeros_like(codes, dtype=bool)
        for event in symbolic.codes_to_notes(codes):
            expected[event.voice, event.onset : event.onset + event.duration] = True
        assert np.array_equal(sounding_frames(codes), expected)


def test_identical_samples_have_zero_distance_and_one_distinct_item():
    result = group_note_diversity(np.stack([C_G_QUARTERS] * 4))
    for name in FEATURES:
        assert result[f"note_distance_{name}"] == 0.0 and result[f"note_vendi_{name}"] == pytest.approx(1.0)
    assert result["note_diversity"] == 0.0


def test_known_different_samples_have_known_values():
    result = group_note_diversity(np.stack([C_QUARTERS, G_EIGHTHS, C_G_QUARTERS]))
    # pitch classes: C vs G disjoint (1), each half-overlaps C-G (0.5): mean (1 + 0.5 + 0.5) / 3
    assert result["note_distance_pitch_class"] == pytest.approx(2 / 3)
    # intervals: unisons, unisons, +-7 leaps; rhythm: quarter, eighth, quarter IOIs
    assert result["note_distance_interval"] == pytest.approx(2 / 3)
    assert result["note_distance_rhythm"] == pytest.approx(2 / 3)
    assert result["note_diversity"] == pytest.approx(2 / 3)
    two = group_note_diversity(np.stack([C_QUARTERS, G_EIGHTHS]))
    assert two["note_distance_pitch_class"] == 1.0 and two["note_vendi_pitch_class"] == pytest.approx(2.0)
    assert two["note_distance_interval"] == 0.0 and two["note_vendi_interval"] == pytest.approx(1.0)


def test_a_degenerate_sample_adds_no_diversity():
    codes = np.stack([C_QUARTERS, G_EIGHTHS, SILENT])
    ungated = group_note_diversity(codes)
    gated = group_note_diversity(codes, np.array([True, True, False]))
    # Ungated, silence is a category of its own, far from everything; gated, its pairs count 0.
    assert ungated["note_distance_pitch_class"] == pytest.approx(1.0)
    assert gated["note_distance_pitch_class"] == pytest.approx(1 / 3)
    assert gated["note_vendi_pitch_class"] == pytest.approx(2.0) and ungated["note_vendi_pitch_class"] == pytest.approx(3.0)
    none = group_note_diversity(codes, np.zeros(3, dtype=bool))
    assert none["note_diversity"] == 0.0 and none["note_vendi_rhythm"] == 0.0
    with pytest.raises(ValueError):
        group_note_diversity(codes[:1])
    with pytest.raises(ValueError):
        group_note_diversity(codes, np.ones(2, dtype=bool))


def test_total_variation_and_vendi_properties():
    rng = np.random.default_rng(2)
    h = rng.random((5, 7))
    h /= h.sum(axis=1, keepdims=True)
    d = total_variation(h)
    assert np.allclose(np.diag(d), 0) and np.allclose(d, d.T) and d.min() >= 0 and d.max() <= 1
    assert np.linalg.eigvalsh(1 - d).min() > -1e-9  # histogram intersection is positive semi-definite
    assert 1.0 <= vendi_from_similarity(1 - d) <= 5.0
    assert vendi_from_similarity(np.eye(4)) == pytest.approx(4.0)
    assert vendi_from_similarity(np.ones((3, 3))) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        vendi_from_similarity(np.ones((2, 3)))
