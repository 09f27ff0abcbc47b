"""Symbolic codec + synthesizer: finite, bounded, click-free audio whose length follows the tempo.

Run: `pytest tests/world/test_codec_symbolic.py`
"""

import numpy as np
import pytest
import torch

from musicgen_cfg.errors import UserError
from musicgen_cfg.world import symbolic, synth
from musicgen_cfg.world.codec import SymbolicCodec

CODEC = SymbolicCodec()


def _chord_codes(num_frames: int = 32) -> np.ndarray:
    """Four voices holding a C major chord from the very first frame to the very last one."""
    codes = np.full((4, num_frames), symbolic.HOLD, dtype=np.uint8)
    codes[:, 0] = [symbolic.pitch_to_token(p) for p in (76, 67, 60, 48)]
    return codes


def test_protocol_attributes():
    assert (CODEC.sample_rate, CODEC.num_codebooks, CODEC.cardinality) == (16000, 4, symbolic.CARDINALITY)


@pytest.mark.parametrize("instrument", sorted(synth.TIMBRES))
def test_decode_is_finite_bounded_and_click_free(instrument):
    audio = CODEC.decode(torch.from_numpy(_chord_codes()[None].astype(np.int64)), [f"{instrument}, 120 bpm"])
    assert audio.dtype == torch.float32 and audio.shape == (1, 32 * 16000 // 8)
    wave = audio[0].numpy()
    assert np.isfinite(wave).all()
    assert np.abs(wave).max() <= synth.PEAK_LIMIT + 1e-6
    assert np.sqrt(np.mean(wave**2)) > 0.5 * synth.TARGET_RMS  # normalised, not silent
    # Sounding notes at both ends: the output still starts and ends at silence, without a jump.
    assert wave[0] == 0 and abs(wave[-1]) < 1e-3
    assert np.abs(wave[:8]).max() < 0.05 and np.abs(wave[-8:]).max() < 0.05


@pytest.mark.parametrize("instrument", sorted(synth.TIMBRES))
def test_single_note_envelope_starts_and_ends_at_zero(instrument):
    note = synth.render_note(synth.TIMBRES[instrument], 69, 0.25, 16000)
    assert abs(note[0]) < 1e-6 and abs(note[-1]) < 0.01 * np.abs(note).max()


def test_cached_notes_are_the_rendered_notes_and_cannot_be_changed():
    timbre = synth.TIMBRES["strings"]
    note = synth.render_note(timbre, 60, 0.5, 16000, 0.75)
    assert synth.render_note(timbre, 60, 0.5, 16000, 0.75) is note  # the siblings' repeated notes: rendered once
    assert np.array_equal(note, synth.render_note.__wrapped__(timbre, 60, 0.5, 16000, 0.75))
    with pytest.raises(ValueError, match="read-only"):
        note[0] = 1.0


def test_length_follows_the_prompt_tempo():
    codes = np.stack([_chord_codes(64)] * 2)
    audio = CODEC.decode(codes, ["organ at 60 bpm", "organ at 120 bpm"])
    # 64 sixteenths = 16 beats: 16 s at 60 bpm, 8 s at 120 bpm (the shorter row padded with silence).
    assert audio.shape == (2, 16 * 16000)
    assert np.abs(audio[1, 8 * 16000 :].numpy()).max() == 0
    assert np.abs(audio[1, : 8 * 16000].numpy()).max() > 0
    assert CODEC.frames_for_duration(10.0, "allegro, 120 bpm") == 80
    assert CODEC.frames_for_duration(10.0, "largo") == round(10 / (60 / (50 * 4)))
    assert CODEC.render_info("slow harp") == {"instrument": "harp", "tempo_bpm": 70.0}


def test_any_codes_decode_including_leading_hold_and_silence():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, symbolic.CARDINALITY, size=(2, 4, 48))
    codes[:, :, 0] = symbolic.HOLD
    codes[1] = symbolic.REST
    audio = CODEC.decode(codes, ["fiddle", ""])
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1
    assert audio[1].abs().max() == 0  # all rests stay silent (no division by zero in normalisation)


def test_bad_input_raises_user_errors():
    with pytest.raises(UserError, match="symbolic codec encodes from scores"):
        CODEC.encode(torch.zeros(1, 1, 16000))
    with pytest.raises(UserError, match="shape"):
        CODEC.decode(np.zeros((4, 8), np.int64), ["x"])
    with pytest.raises(UserError, match="prompts"):
        CODEC.decode(np.zeros((2, 4, 8), np.int64), ["x"])
    with pytest.raises(UserError, match=r"\[0, 64\)"):
        CODEC.decode(np.full((1, 4, 8), 64), ["x"])
    with pytest.raises(UserError, match="duration"):
        CODEC.frames_for_duration(0, "x")


@pytest.mark.parametrize("instrument", sorted(synth.TIMBRES))
def test_notes_sound_at_their_pitch(instrument):
    codes = np.full((1, 4, 16), symbolic.REST, dtype=np.uint8)
    codes[0, 0, 0], codes[0, 0, 1:] = symbolic.pitch_to_token(69), symbolic.HOLD  # A4 for 16 frames
    wave = CODEC.decode(codes, [f"{instrument}, 60 bpm"])[0].numpy()
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    peak_hz = np.argmax(spectrum) * CODEC.sample_rate / len(wave)
    assert peak_hz == pytest.approx(440, abs=3)
