"""The built-in synthesizer behind the symbolic codec: note events -> a mono waveform, numpy only.

Library module; `python bench/codec.py` measures its speed per timbre.

Each note is a band-limited wavetable oscillator (harmonic amplitudes per timbre, only partials below
MAX_PARTIAL_HZ so nothing aliases) shaped by an envelope that is continuous everywhere: a linear attack
ramp, an exponential decay (towards a sustain level for bowed/blown/sung timbres, towards zero for plucked
and struck ones, faster for higher notes), and a linear release ramp after the note ends, so notes start
and stop without clicks. Plucked/struck timbres also darken over time (cross-fade from the full table to a
mellow one). Strings, fiddle, choir and flute have vibrato; strings and choir add a detuned second
oscillator (chorus). The mix is loudness-normalised (RMS TARGET_RMS, peak at most PEAK_LIMIT) and faded
in/out over FADE_SECONDS, so the output is in [-1, 1] and starts and ends at silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from musicgen_cfg.world.symbolic import NoteEvent

TABLE_SIZE = 4096  # a power of two: table indices wrap with a bit mask
MAX_PARTIAL_HZ = 7000.0  # below the 8 kHz Nyquist limit of the codec's 16 kHz output
TARGET_RMS = 0.1  # -20 dBFS
PEAK_LIMIT = 0.95
FADE_SECONDS = 0.01
VOICE_GAINS = (1.0, 0.75, 0.75, 0.85)  # melody a little in front, bass a little under it
NOTE_CACHE_SIZE = 512  # rendered notes kept (a group of siblings has 100-200 distinct ones, tens of kB each)


@dataclass(frozen=True)
class Timbre:
    """How one instrument sounds."""

    harmonics: tuple[float, ...]  # amplitude of partial 1, 2, 3, ...
    attack: float  # seconds of the linear onset ramp
    decay: float  # seconds: exponential decay time constant at middle C (shorter for higher notes)
    sustain: float  # level the decay tends to while the note is held; 0 for plucked/struck
    release: float  # seconds of the linear ramp to silence after the note ends
    vibrato_hz: float = 0.0
    vibrato_cents: float = 0.0
    chorus_cents: float = 0.0  # detune of a second oscillator (0 = single oscillator)
    darkening: float = 0.0  # seconds over which upper partials fade (0 = constant colour)


def _saw(count: int, slope: float = 1.0) -> tuple[float, ...]:
    return tuple(1.0 / n**slope for n in range(1, count + 1))


TIMBRES = {
    "organ": Timbre((1.0, 0.7, 0.35, 0.45, 0.12, 0.2, 0.05, 0.15), attack=0.03, decay=0.3, sustain=0.9,
                    release=0.06),
    "strings": Timbre(_saw(14), attack=0.09, decay=0.5, sustain=0.85, release=0.15, vibrato_hz=5.5,
                      vibrato_cents=10, chorus_cents=7),
    "choir": Timbre((1.0, 0.9, 0.75, 0.55, 0.3, 0.2, 0.12, 0.06, 0.04), attack=0.15, decay=0.6, sustain=0.9,
                    release=0.25, vibrato_hz=5.0, vibrato_cents=14, chorus_cents=9),
    "flute": Timbre((1.0, 0.3, 0.12, 0.05, 0.02), attack=0.05, decay=0.4, sustain=0.85, release=0.08,
                    vibrato_hz=4.8, vibrato_cents=8),
    "fiddle": Timbre(_saw(18, slope=0.85), attack=0.04, decay=0.4, sustain=0.8, release=0.1, vibrato_hz=6.0,
                     vibrato_cents=14),
    "harp": Timbre((1.0, 0.45, 0.2, 0.08, 0.04), attack=0.004, decay=0.9, sustain=0.0, release=0.35,
                   darkening=0.25),
    "harpsichord": Timbre(_saw(24, slope=0.6), attack=0.002, decay=1.0, sustain=0.0, release=0.05,
                          darkening=0.35),
    "piano": Timbre((1.0, 0.55, 0.3, 0.2, 0.1, 0.07, 0.05, 0.03), attack=0.003, decay=1.1, sustain=0.0,
                    release=0.12, darkening=0.5),
}


@lru_cache(maxsize=512)
def _wavetable(harmonics: tuple[float, ...], num_partials: int) -> np.ndarray:
    """One period of the first num_partials harmonics, float32 [TABLE_SIZE], peak 1."""
    phase = np.arange(TABLE_SIZE) * (2 * np.pi / TABLE_SIZE)
    wave = sum(a * np.sin((n + 1) * phase) for n, a in enumerate(harmonics[: max(num_partials, 1)]))
    return (wave / np.abs(wave).max()).astype(np.float32)


def midi_to_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


def _oscillator(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    return table[(cycles * TABLE_SIZE).astype(np.int64) & (TABLE_SIZE - 1)]


@lru_cache(maxsize=NOTE_CACHE_SIZE)
def render_note(timbre: Timbre, pitch: int, seconds: float, sample_rate: int, gain: float = 1.0) -> np.ndarray:
    """One note held for `seconds`, plus its release: float32 [ceil((seconds + release) * sample_rate)], read-only.

    Cached: a note's waveform does not depend on when it starts, and the siblings of a prompt (one timbre,
    one tempo) repeat most of their (pitch, length, voice) notes: only 20-50 % of a training step's notes
    are new, so the reward's synthesis renders a third of them.
    """
    frequency = midi_to_hz(pitch)
    length = int(np.ceil((seconds + timbre.release) * sample_rate))
    t = np.arange(length) / sample_rate  # float64: phase stays exact over long notes
    cycles = frequency * t
    if timbre.vibrato_cents:
        depth = 2.0 ** (timbre.vibrato_cents / 1200) - 1
        # Integral of f * depth * sin(2 pi v t): vibrato as frequency modulation, phase-continuous.
        cycles = cycles + frequency * depth * (1 - np.cos(2 * np.pi * timbre.vibrato_hz * t)) / (
            2 * np.pi * timbre.vibrato_hz)
    partials = int(MAX_PARTIAL_HZ // frequency)
    table = _wavetable(timbre.harmonics, partials)
    wave = _oscillator(table, cycles)
    if timbre.chorus_cents:
        detune = 2.0 ** (timbre.chorus_cents / 1200)
        wave = 0.5 * (wave + _oscillator(table, cycles * detune + 0.25))
    if timbre.darkening:
        bright = np.exp(-t / timbre.darkening)
        wave = wave * bright + _oscillator(_wavetable(timbre.harmonics, min(partials, 2)), cycles) * (1 - bright)
    decay = timbre.decay * (261.6 / frequency) ** 0.3
    envelope = timbre.sustain + (1 - timbre.sustain) * np.exp(-t / decay)
    envelope *= np.minimum(t / timbre.attack, 1.0)
    envelope *= np.clip(1.0 - (t - seconds) / timbre.release, 0.0, 1.0)
    note = (wave * envelope * gain).astype(np.float32)
    note.flags.writeable = False  # shared by every caller of the cache
    return note


def render(events: list[NoteEvent], num_samples: int, frame_seconds: float, instrument: str,
           sample_rate: int = 16000) -> np.ndarray:
    """Note events (frames of frame_seconds) -> float32 [num_samples] in [-1, 1], loudness-normalised.

    Notes ringing past num_samples are cut under the final fade-out.
    """
    if instrument not in TIMBRES:
        raise ValueError(f"unknown instrument {instrument!r}; known: {', '.join(TIMBRES)}")
    timbre = TIMBRES[instrument]
    mix = np.zeros(num_samples, dtype=np.float32)
    for event in events:
        start = int(round(event.onset * frame_seconds * sample_rate))
        if start >= num_samples:
            continue
        note = render_note(timbre, event.pitch, event.duration * frame_seconds, sample_rate,
                           VOICE_GAINS[event.voice % len(VOICE_GAINS)])
        end = min(start + len(note), num_samples)
        mix[start:end] += note[: end - start]
    return normalise(mix, sample_rate)


def normalise(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS to TARGET_RMS with the peak at most PEAK_LIMIT, then fade in/out; silence stays silence."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if wave.size else 0.0
    if rms > 1e-8:
        wave = wave * min(TARGET_RMS / rms, PEAK_LIMIT / float(np.abs(wave).max()))
    fade = min(int(FADE_SECONDS * sample_rate), len(wave) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        wave[:fade] *= ramp
        wave[-fade:] *= ramp[::-1]
    return wave.astype(np.float32)
