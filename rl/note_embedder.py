"""The note-hearing music embedder of the diversity reward: audio -> transcribed notes -> note statistics.

    embedder = load_embedder("default")                        # rl/embedders.py dispatches on config.json
    vectors = embedder.embed(waveforms, sample_rate=16000)     # [N, samples] -> [N, D], unit norm
    musicgen-cfg embedder train --kind notes --model default --out DIR   # trains the transcriber (rl/train_embedder.py)

Why not a contrastive embedding of the spectrogram: sibling generations of one prompt share instrument and
tempo, and what a listener hears as "different music" among them is different notes (melody, harmony,
rhythm). A mel-spectrogram network trained to tell clips apart learns the easiest cues, which are how many
notes and voices sound, not which ones (its distances followed voice-count differences at 0.75 and pitch
classes at 0.01). This embedder hears the notes first and summarises them after:

1. Front end: a semitone-resolved log spectrogram (triangular filters one semitone wide on MIDI pitch,
   from a 256 ms window for pitch and a 64 ms window for timing, 20 ms hop) [N, 2, BINS, T], standardised per clip
   so that playback gain does not matter.
2. `NoteTranscriber`: a small convolutional net, pitch-translation-equivariant (the same kernel at every
   pitch, so it hears an interval the same in any key) with two octaves of context above each pitch for
   its harmonics, trained supervised on rendered scores of every timbre (onset and sounding targets).
   It outputs note-onset probabilities [N, PITCHES, T].
3. Note statistics of the detected onsets (local maxima over time above `onset_threshold`): a
   pitch-class histogram (harmony, key), a melodic-interval histogram (each onset against the nearest
   pitch of the previous onset time, -12..+12 semitones: contour, steps and leaps) and an inter-onset
   histogram on a log-time axis (rhythm). Each block is a histogram with a "nothing to count" bin, turned
   into a unit vector by its square root (so block cosines are Bhattacharyya affinities), and the
   embedding is the concatenation of the three blocks over sqrt(3): cosine = the mean of the blocks'
   affinities, each kind of difference weighted alike.

The statistics are not learned, the transcription is: what is compared is fixed by design (and the same
for every audio source), how well the notes are heard is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from musicgen_cfg.errors import UserError

NOTE_KIND = "note-transcription"  # the "embedder" field of its config.json


@dataclass
class NoteEmbedderConfig:
    """Front end, transcriber and statistics of the note embedder (saved as its config.json)."""

    sample_rate: int = field(default=16000, metadata={"help": "rate the embedder works at (Hz)"})
    hop_length: int = field(default=320, metadata={"help": "frame hop of both spectrograms (20 ms at 16 kHz)"})
    pitch_n_fft: int = field(default=4096, metadata={"help": "FFT of the pitch spectrogram (resolves semitones)"})
    time_n_fft: int = field(default=1024, metadata={"help": "FFT of the timing spectrogram (sharp onsets)"})
    lowest_pitch: int = field(default=36, metadata={"help": "MIDI pitch of the lowest transcribed note"})
    num_pitches: int = field(default=62, metadata={"help": "transcribed pitches from lowest_pitch up"})
    harmonic_bins: int = field(default=24, metadata={"help": "spectrogram bins above the highest note (harmonics)"})
    floor_db: float = field(default=80.0, metadata={"help": "dynamic range kept below each clip's peak (dB)"})
    channels: int = field(default=16, metadata={"help": "conv channels of the transcriber"})
    onset_threshold: float = field(default=0.5, metadata={"help": "onset probability that counts as a note"})
    max_interval: int = field(default=12, metadata={"help": "melodic intervals clipped to +-this (semitones)"})
    ioi_bins: int = field(default=20, metadata={"help": "log-spaced inter-onset-interval bins"})
    ioi_range: tuple[float, float] = field(default=(0.05, 2.0), metadata={"help": "inter-onset range (s)"})

    def __post_init__(self):
        self.ioi_range = tuple(float(v) for v in self.ioi_range)
        for name in ("sample_rate", "hop_length", "pitch_n_fft", "time_n_fft", "num_pitches", "channels",
                     "max_interval", "ioi_bins", "floor_db"):
            if not getattr(self, name) > 0:
                raise UserError(f"note embedder config: {name} must be positive, got {getattr(self, name)}")
        if not 0 < self.onset_threshold < 1:
            raise UserError(f"note embedder config: onset_threshold must be in (0, 1), got {self.onset_threshold}")
        if not 0 < self.ioi_range[0] < self.ioi_range[1]:
            raise UserError(f"note embedder config: need 0 < ioi_range[0] < ioi_range[1], got {self.ioi_range}")
        if self.harmonic_bins < 0 or self.lowest_pitch < 0:
            raise UserError("note embedder config: harmonic_bins and lowest_pitch must be >= 0")
        if 69 + 12 * math.log2(self.sample_rate / 2 / 440) < self.lowest_pitch + self.num_pitches:
            raise UserError("note embedder config: the highest note lies above the Nyquist frequency")

    @property
    def num_bins(self) -> int:
        return self.num_pitches + self.harmonic_bins

    @property
    def hop_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    @property
    def embedding_dim(self) -> int:
        return 13 + (2 * self.max_interval + 2) + (self.ioi_bins + 1)


def semitone_filters(n_fft: int, sample_rate: int, lowest_pitch: int, num_bins: int) -> torch.Tensor:
    """Triangular filters one semitone wide on MIDI pitch, centred on lowest_pitch, +1, ...: [n_fft // 2 + 1, num_bins].

    Where FFT bins are coarser than a semitone (low notes in the timing spectrogram) a filter may catch
    no bin centre; it then takes the nearest bin, so that no band is always empty.
    """
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    midi = 69 + 12 * torch.log2(freqs.clamp(min=1e-3) / 440.0)
    centres = lowest_pitch + torch.arange(num_bins, dtype=torch.float64)
    weights = (1 - (midi[:, None] - centres[None]).abs()).clamp(min=0)
    weights[0] = 0  # DC
    empty = weights.sum(0) == 0
    nearest = (midi[:, None] - centres[None]).abs().argmin(0)
    weights[nearest[empty], torch.nonzero(empty).flatten()] = 1.0
    return weights.float()


class NoteTranscriber(nn.Module):
    """Waveforms -> note-onset logits: [N, S] -> [N, num_pitches, T] (T = 1 + S // hop_length), and sounding logits.

    Every convolution is the same at every pitch (transposition-equivariant); the pitch kernels reach
    two octaves up, where the harmonics of a note lie. GroupNorm, not BatchNorm: per-clip statistics.
    """

    def __init__(self, config: NoteEmbedderConfig | None = None):
        super().__init__()
        self.config = cfg = config or NoteEmbedderConfig()
        for name, n_fft in (("pitch", cfg.pitch_n_fft), ("time", cfg.time_n_fft)):
            self.register_buffer(f"{name}_filters", semitone_filters(n_fft, cfg.sample_rate, cfg.lowest_pitch,
                                                                     cfg.num_bins), persistent=False)
            self.register_buffer(f"{name}_window", torch.hann_window(n_fft), persistent=False)
        c = cfg.channels

        def block(cin, cout, kernel, dilation=(1, 1)):
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
            return [nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation), nn.GroupNorm(4, cout), nn.ReLU()]

        self.net = nn.Sequential(
            *block(2, c, (3, 5)),
            *block(c, c, (13, 1)),  # +-12 semitones: octave relations
            *block(c, c, (13, 1), dilation=(2, 1)),  # +-24 semitones: the harmonics above a note
            *block(c, c, (3, 5), dilation=(1, 2)),  # +-80 ms: attack shapes, repeated notes
            *block(c, c, (3, 5), dilation=(1, 4)),  # +-160 ms
            nn.Conv2d(c, 2, 1),
        )

    def spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """waveforms [N, S] at sample_rate -> standardised log semitone spectrograms [N, 2, num_bins, 1 + S // hop]."""
        cfg, layers = self.config, []
        for name, n_fft in (("pitch", cfg.pitch_n_fft), ("time", cfg.time_n_fft)):
            spec = torch.stft(waveforms.float(), n_fft, hop_length=cfg.hop_length, window=getattr(self, f"{name}_window"),
                              center=True, pad_mode="constant", return_complex=True)
            power = (spec.abs() ** 2).transpose(1, 2) @ getattr(self, f"{name}_filters")  # [N, T, bins]
            layers.append(torch.log(power + 1e-10).transpose(1, 2))
        x = torch.stack(layers, dim=1)
        floor = x.amax(dim=(2, 3), keepdim=True) - cfg.floor_db * math.log(10) / 10
        x = torch.maximum(x, floor)
        return (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-5)

    def forward(self, spectrogram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 2, num_bins, T] -> (onset logits, sounding logits), each [N, num_pitches, T]."""
        out = self.net(spectrogram)[:, :, : self.config.num_pitches]
        return out[:, 0], out[:, 1]


def detect_onsets(onset_probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """[P, T] probabilities -> (frames, pitch indices) of the local maxima over time above threshold, by frame."""
    p = np.asarray(onset_probs)
    before = np.pad(p, ((0, 0), (1, 0)))[:, :-1]
    after = np.pad(p, ((0, 0), (0, 1)))[:, 1:]
    pitches, frames = np.nonzero((p >= threshold) & (p > before) & (p >= after))
    order = np.argsort(frames, kind="stable")
    return frames[order], pitches[order]


def _histogram(values: np.ndarray, bins: int) -> np.ndarray:
    """Counts of integer bin indices in [0, bins) plus a final "nothing to count" bin, normalised: [bins + 1]."""
    counts = np.zeros(bins + 1)
    if len(values):
        np.add.at(counts, values, 1.0)
    else:
        counts[-1] = 1.0
    return counts / counts.sum()


def note_statistics(frames: np.ndarray, midi: np.ndarray, config: NoteEmbedderConfig) -> dict:
    """Detected onsets (frame of hop_seconds, MIDI pitch; sorted by frame) -> {"pitch_class": [13], "interval": [2I + 2], "ioi": [B + 1]}.

    Onsets within one frame of each other form one onset time (chords, slightly spread attacks). An
    interval is counted for every onset against the nearest pitch sounding at the previous onset time
    (within an octave): in a texture of voices, that is each voice's own melodic step.
    """
    midi = np.asarray(midi, dtype=np.int64)
    frames = np.asarray(frames, dtype=np.int64)
    groups: list[np.ndarray] = []
    start = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i] - frames[i - 1] > 1:
            groups.append(np.arange(start, i))
            start = i
    intervals = []
    for previous, current in zip(groups, groups[1:]):
        before = midi[previous]
        for pitch in midi[current]:
            step = pitch - before
            nearest = step[np.argmin(np.abs(step))]
            if abs(nearest) <= config.max_interval:
                intervals.append(nearest + config.max_interval)
    times = np.array([frames[g].mean() for g in groups]) * config.hop_seconds
    low, high = map(math.log, config.ioi_range)
    iois = np.diff(times)
    ioi_bins = np.clip(np.floor((np.log(np.maximum(iois, 1e-6)) - low) / (high - low) * config.ioi_bins),
                       0, config.ioi_bins - 1).astype(np.int64)
    return {
        "pitch_class": _histogram(midi % 12, 12),
        "interval": _histogram(np.asarray(intervals, dtype=np.int64), 2 * config.max_interval + 1),
        "ioi": _histogram(ioi_bins, config.ioi_bins),
    }


def statistics_vector(stats: dict) -> np.ndarray:
    """The embedding of note statistics: each histogram's square root (a unit vector), concatenated / sqrt(3)."""
    return np.concatenate([np.sqrt(stats[name]) for name in ("pitch_class", "interval", "ioi")]) / math.sqrt(3)


class NoteEmbedder(nn.Module):
    """The diversity reward's embedder: transcribe notes, embed their statistics (see the module docstring)."""

    kind = NOTE_KIND

    def __init__(self, config: NoteEmbedderConfig | None = None):
        super().__init__()
        self.config = config or NoteEmbedderConfig()
        self.transcriber = NoteTranscriber(self.config)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @torch.no_grad()
    def onset_probabilities(self, waveforms: torch.Tensor, batch: int = 8) -> torch.Tensor:
        """waveforms [N, S] at sample_rate -> onset probabilities [N, num_pitches, T]."""
        was_training = self.training
        self.eval()
        device = self.transcriber.pitch_filters.device
        out = [torch.sigmoid(self.transcriber(self.transcriber.spectrogram(part.to(device)))[0]).cpu()
               for part in waveforms.split(batch)]
        self.train(was_training)
        return torch.cat(out)

    def notes(self, waveforms: torch.Tensor, sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The detected onsets of each clip: [(frames, MIDI pitches)], frames of hop_seconds."""
        from rl.embedders import resample

        audio = resample(waveforms.float(), sample_rate, self.sample_rate)
        probs = self.onset_probabilities(audio).numpy()
        found = [detect_onsets(p, self.config.onset_threshold) for p in probs]
        return [(frames, pitches + self.config.lowest_pitch) for frames, pitches in found]

    @torch.no_grad()
    def embed(self, waveforms: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """waveforms float32 [N, S] at `sample_rate` -> unit vectors [N, embedding_dim]."""
        if waveforms.dim() != 2 or waveforms.shape[1] == 0:
            raise ValueError(f"expected waveforms [N, samples > 0], got {tuple(waveforms.shape)}")
        vectors = [statistics_vector(note_statistics(frames, midi, self.config))
                   for frames, midi in self.notes(waveforms, sample_rate)]
        return torch.from_numpy(np.stack(vectors)).float()
