"""The demo's per-variation pictures: a 4-voice piano roll (default model) or a spectrogram (real MusicGen).

Library module of the Gradio demo (`musicgen-cfg demo`, app/ui.py). Figures are drawn with
matplotlib's object API (`Figure`, Agg canvas) rather than pyplot: pyplot keeps global state that
is not safe to touch from Gradio's worker threads.
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from musicgen_cfg.world.symbolic import VOICE_NAMES, codes_to_notes

VOICE_COLORS = ("#d1495b", "#edae49", "#00798c", "#30638e")  # soprano .. bass
FIGSIZE = (6.4, 2.3)
DPI = 100


def piano_roll(codes: np.ndarray, seconds_per_frame: float, path: Path) -> Path:
    """Draw codes [4, T] of the default model's score format as a piano roll, one colour per voice."""
    events = codes_to_notes(np.asarray(codes))
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_subplot()
    for voice, (name, color) in enumerate(zip(VOICE_NAMES, VOICE_COLORS)):
        notes = [e for e in events if e.voice == voice]
        ax.barh([e.pitch for e in notes], [e.duration * seconds_per_frame for e in notes],
                left=[e.onset * seconds_per_frame for e in notes], height=0.85, color=color,
                edgecolor="black", linewidth=0.3, label=name)
    ax.set_xlim(0, max(codes.shape[-1] * seconds_per_frame, 1e-3))
    if events:
        pitches = [e.pitch for e in events]
        ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    else:
        ax.text(0.5, 0.5, "silence", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MIDI pitch")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def spectrogram(audio: np.ndarray, sample_rate: int, path: Path, n_fft: int = 1024, hop: int = 256) -> Path:
    """Draw a log-magnitude spectrogram (dB below the clip's peak, 80 dB range) of mono audio [N]."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < n_fft:  # a clip shorter than one window still gets one frame
        audio = np.pad(audio, (0, n_fft - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    db = 10 * np.log10(np.maximum(power, 1e-12))
    db = np.maximum(db, db.max() - 80.0).T
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_subplot()
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma",
              extent=(0, len(audio) / sample_rate, 0, sample_rate / 2000))
    ax.set_xlabel("seconds")
    ax.set_ylabel("kHz")
    fig.tight_layout()
    fig.savefig(path)
    return path
