"""`musicgen-cfg embedder check` (rl/embedder_check.py, musicgen_cfg/experiments/embedder_check.py): Spearman's
rho, stand-in embedders whose answer is known, the edits' token validity, and the command on real embedders.

    .venv/bin/python -m pytest -q tests/rl/test_embedder_check.py
"""

import json

import numpy as np
import pytest

from musicgen_cfg.cli import main
from musicgen_cfg.world import symbolic
from musicgen_cfg.world.codec import SymbolicCodec
from musicgen_cfg.world.corpus import load_dataset
from rl.embedder_check import (
    EDITS,
    rotate_codes,
    select_style_groups,
    spearman,
    swap_melody,
    thin_density,
    transposed,
)
from rl.embedder_check import check_embedder as measure
from rl.note_diversity import pitch_class_histogram


@pytest.fixture(scope="module")
def groups():
    return select_style_groups(load_dataset("test"), segments=88, crop_seconds=8.0, seed=0)  # 8 per style


def no_audio(codes, prompt):
    """A renderer for stand-in embedders that read the codes only."""
    return np.zeros((len(codes), 1), np.float32)


def unit(vectors):
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------ spearman

def test_spearman_of_monotone_reversed_tied_and_constant_inputs():
    x = np.array([0.1, 0.5, 0.7, 3.0, 9.0])
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -x**3) == pytest.approx(-1.0)
    # Ties share their mean rank: y ranks (0.5, 0.5, 2, 3, 4) against x's 0..4.
    y = np.array([1.0, 1.0, 2.0, 3.0, 4.0])
    ranks = np.array([0.5, 0.5, 2, 3, 4])
    assert spearman(x, y) == pytest.approx(np.corrcoef(np.arange(5), ranks)[0, 1])
    assert spearman(np.array([1.0, 1.0, 2.0, 2.0]), np.array([2.0, 2.0, 1.0, 1.0])) == pytest.approx(-1.0)
    assert spearman(x, np.full(5, 0.3)) == 0.0  # constant: no order to follow
    assert spearman(np.ones(1), np.ones(1)) == 0.0
    with pytest.raises(ValueError):
        spearman(x, x[:3])


# ------------------------------------------------------------------------ known answers end to end

def test_a_pitch_class_embedder_follows_pitch_classes_and_a_random_one_nothing(groups):
    def pitch_classes(codes, waveforms):
        return unit(np.stack([pitch_class_histogram(c)[:12] for c in codes]))

    rng = np.random.default_rng(0)

    def random_vectors(codes, waveforms):
        return unit(rng.normal(size=(len(codes), 16)))

    chroma = measure(groups, no_audio, pitch_classes)
    assert chroma["correlations"]["pooled"]["pitch_class"] > 0.8
    assert chroma["num_pairs"]["pooled"] == sum(len(g.codes) * (len(g.codes) - 1) // 2 for g in groups)
    distances = {name: value["mean"] for name, value in chroma["distances"].items()}
    assert distances["rerender"] == pytest.approx(0.0, abs=1e-9)
    assert distances["transpose_2"] > distances["rotate_bar"]  # new pitch classes vs the same notes
    noise = measure(groups, no_audio, random_vectors)
    assert all(abs(rho) < 0.25 for rho in noise["correlations"]["pooled"].values())


def test_an_onset_counter_follows_the_onset_count_difference(groups):
    def onset_counter(codes, waveforms):
        angle = (codes >= 2).sum(axis=(1, 2)) / 1000 * np.pi / 2  # 1 - cos grows with the count difference
        return np.stack([np.cos(angle), np.sin(angle)], axis=1)

    result = measure(groups, no_audio, onset_counter)
    assert result["correlations"]["pooled"]["onset_count"] > 0.95
    assert result["distances"]["transpose_7"]["mean"] == pytest.approx(0.0, abs=1e-9)  # same onsets
    assert result["distances"]["thin_density"]["mean"] > 0


# ---------------------------------------------------------------------------------------- the edits

@pytest.mark.slow  # renders every edit of 88 dataset segments
def test_the_edits_are_valid_token_sequences(groups):
    codec = SymbolicCodec()
    for group in groups:
        for name, edit in EDITS.items():
            for i in range(len(group.codes)):
                edited = edit(group.codes, i)
                if edited is None:
                    continue
                assert edited.shape == group.codes[i].shape, name
                assert edited.min() >= 0 and edited.max() < symbolic.CARDINALITY, name
                assert codec.decode(edited[None], [group.prompt]).shape[1] > 0


def test_transposition_shifts_every_note_by_exactly_the_interval_or_is_skipped(groups):
    codes = groups[0].codes
    original = symbolic.codes_to_notes(codes[0])
    shifted = symbolic.codes_to_notes(transposed(7)(codes, 0))
    assert [n.pitch + 7 for n in original] == [n.pitch for n in shifted]
    assert [n._replace(pitch=0) for n in original] == [n._replace(pitch=0) for n in shifted]
    top = np.full((1, 4, 8), symbolic.REST, np.int64)
    top[0, 0, 0] = symbolic.pitch_to_token(symbolic.HIGHEST_PITCH - 1)
    assert transposed(2)(top, 0) is None


def test_rotation_keeps_the_frames_and_notes_and_repairs_the_holds():
    line = [symbolic.pitch_to_token(60), symbolic.HOLD, symbolic.HOLD, symbolic.HOLD,  # C4 over the cut
            symbolic.pitch_to_token(64), symbolic.HOLD, symbolic.REST, symbolic.HOLD]
    codes = np.full((4, 8), symbolic.REST, np.int64)
    codes[0] = line
    codes[1] = symbolic.HOLD  # frames 0-1 rest (nothing to hold), then D3 to the end
    codes[1, 2] = symbolic.pitch_to_token(50)
    rotated = rotate_codes(codes, frames=2)
    assert rotated.shape == codes.shape
    assert rotated[0].tolist() == [symbolic.pitch_to_token(60), symbolic.HOLD, symbolic.pitch_to_token(64),
                                   symbolic.HOLD, symbolic.REST, symbolic.HOLD, symbolic.pitch_to_token(60),
                                   symbolic.HOLD]
    assert rotated[1].tolist()[-2:] == [symbolic.REST, symbolic.HOLD]  # not a continuation of D3
    notes = symbolic.codes_to_notes(rotated)
    assert sorted((n.voice, n.pitch, n.duration) for n in notes) == [
        (0, 60, 2), (0, 60, 2), (0, 64, 2), (1, 50, 6)]
    with pytest.raises(ValueError):
        rotate_codes(codes, frames=8)


def test_swap_melody_and_thinning_change_what_they_say():
    rng = np.random.default_rng(0)
    group = rng.integers(2, symbolic.CARDINALITY, size=(3, 4, 16))
    swapped = swap_melody(group, 2)
    assert (swapped[0] == group[0][0]).all() and (swapped[1:] == group[2][1:]).all()
    thinned = thin_density(group, 0)
    assert (thinned[0] == group[0][0]).all()
    assert ((thinned[1:] >= 2).sum(axis=1) == 8).all()
    solo = np.zeros((1, 4, 16), np.int64)
    solo[0, 0, ::2] = symbolic.pitch_to_token(60)
    assert (thin_density(solo, 0)[0] >= 2).sum() == 4  # a solo melody is thinned itself
    assert thin_density(np.zeros((1, 4, 16), np.int64), 0) is None


# ------------------------------------------------------------------------------------------ command

@pytest.mark.slow  # the command on the shipped embedder and dataset
def test_the_command_on_the_shipped_embedder_writes_its_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["embedder", "check", "default", "--segments", "22", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["spec"] == "default" and len(result["embedder"]["sha256"]) == 64
    assert len(result["dataset"]["sha256"]) == 64 and result["settings"]["segments"] == 22
    assert set(result["correlations"]["pooled"]) == {"pitch_class", "interval", "rhythm", "onset_count",
                                                     "active_voices"}
    assert result["distances"]["rerender"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert "| default |" in capsys.readouterr().out


@pytest.mark.slow  # the command through a real-format checkpoint's EnCodec
def test_the_command_embeds_with_a_real_checkpoints_encodec(tiny_dir, tmp_path):
    out = tmp_path / "encodec.json"
    assert main(["embedder", "check", "encodec-emb", "--codec-model", str(tiny_dir), "--segments", "22",
                 "--crop-seconds", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["spec"] == "encodec-emb" and len(result["embedder"]["sha256"]) == 64
    assert result["distances"]["transpose_7"]["mean"] > 0


@pytest.mark.parametrize("argv, message", [
    (["no-such-embedder"], "unknown embedder"),
    (["encodec-emb"], "--codec-model"),
    (["default", "--segments", "3"], "fewer than 2 for each of the"),
    (["default", "--crop-seconds", "0.5"], "more than one bar"),
])
def test_bad_input_gives_one_line(argv, message, tmp_path, capsys):
    assert main(["embedder", "check", *argv, "--out", str(tmp_path / "x.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not (tmp_path / "x.json").exists()
