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
   pitch-class histogram (harmony, key), a melodic-interval histogram (the steps of up to `max_voices`
   voices followed through the onset times, `voice_intervals`, -12..+12 semitones: contour, steps and
   leaps) and an inter-onset histogram on a log-time axis (rhythm). Each block is a histogram with a
   "nothing to count" bin, turned into a unit vector by its square root (so block cosines are
   Bhattacharyya affinities), scaled by the square root of its weight: cosine = the weighted mean of the
   blocks' affinities (`block_weights`, sum 1).

The statistics are not learned, the transcription is: what is compared is fixed by design (and the same
for every audio source), how well the notes are heard is trained. The block weights are measured, not
tuned: training sets them so that each block's distance has the same spread over pairs of train-split
crops of one style (`equal_spread_weights`); with equal weights the interval block, whose distances vary
half as much, would barely move the cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from musicgen_cfg.errors import UserError

NOTE_KIND = "note-transcription"  # the "embedder" field of its config.json
BLOCKS = ("pitch_class", "interval", "ioi")  # the statistics, in embedding order


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
    max_voices: int = field(default=4, metadata={"help": "voices the interval statistic follows"})
    ioi_bins: int = field(default=20, metadata={"help": "log-spaced inter-onset-interval bins"})
    ioi_range: tuple[float, float] = field(default=(0.05, 2.0), metadata={"help": "inter-onset range (s)"})
    block_weights: tuple[float, float, float] = field(
        default=(1 / 3, 1 / 3, 1 / 3),
        metadata={"help": "weights of the pitch-class, interval and inter-onset affinities in the cosine "
                          "(normalised to sum 1; training fits them, equal_spread_weights)"})

    def __post_init__(self):
        self.ioi_range = tuple(float(v) for v in self.ioi_range)
        weights = np.asarray(self.block_weights, dtype=np.float64)
        if weights.shape != (len(BLOCKS),) or not (np.isfinite(weights).all() and (weights > 0).all()):
            raise UserError(f"note embedder config: block_weights must be {len(BLOCKS)} positive numbers, "
                            f"got {self.block_weights}")
        self.block_weights = tuple(float(w) for w in weights / weights.sum())
        for name in ("sample_rate", "hop_length", "pitch_n_fft", "time_n_fft", "num_pitches", "channels",
                     "max_interval", "max_voices", "ioi_bins", "floor_db"):
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
            # in place: the GroupNorm's output is not needed again (its backward reads its input), one copy less
            return [nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation), nn.GroupNorm(4, cout),
                    nn.ReLU(inplace=True)]

        self.net = nn.Sequential(
            *block(2, c, (3, 5)),
            *block(c, c, (13, 1)),  # +-12 semitones: octave relations
            *block(c, c, (13, 1), dilation=(2, 1)),  # +-24 semitones: the harmonics above a note
            *block(c, c, (3, 5), dilation=(1, 2)),  # +-80 ms: attack shapes, repeated notes
            *block(c, c, (3, 5), dilation=(1, 4)),  # +-160 ms
            nn.Conv2d(c, 2, 1),
        )

    def spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """waveforms [N, S] at sample_rate -> standardised log semitone spectrograms [N, 2, num_bins, 1 + S // hop].

        One clip at a time: the same values as one batched transform, bit for bit, in half the time on a
        CPU, where a clip's complex STFT (14 MB for 17 s) is reused from cache and a group's is not
        (bench/train_step.py; tests/rl/test_note_embedder.py checks the equality).
        """
        return torch.cat([self._clip_spectrogram(clip[None]) for clip in waveforms.float()])

    def _clip_spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """One clip [1, S] -> [1, 2, num_bins, 1 + S // hop] (each clip is standardised on its own)."""
        cfg, layers = self.config, []
        for name, n_fft in (("pitch", cfg.pitch_n_fft), ("time", cfg.time_n_fft)):
            spec = torch.stft(waveforms, n_fft, hop_length=cfg.hop_length, window=getattr(self, f"{name}_window"),
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


def voice_intervals(onset_times: list[np.ndarray], max_voices: int, max_interval: int) -> list[int]:
    """Melodic steps of voices followed through onset times (the pitches of each, in time order), clipped to +-max_interval.

    A voice holds its latest pitch. At each onset time the (onset, voice) pairs are matched closest first,
    each onset and voice at most once, so a voice that holds is not matched and a chord's notes go to the
    voices nearest them. A match further than max_interval is refused while fewer than max_voices voices
    are followed: that onset starts a voice (an entry, not a leap), as does an unmatched onset while there
    is room. Without tracking (each onset against the nearest pitch of the previous onset time), the
    steps of 4-voice polyphony mix voices: held notes vanish from the comparison and a voice's step is
    measured from another voice.
    """
    voices: list[int] = []
    steps: list[int] = []
    for pitches in onset_times:
        pitches = [int(p) for p in pitches]
        pairs = sorted((abs(p - v), i, j) for i, p in enumerate(pitches) for j, v in enumerate(voices))
        matched: dict[int, int] = {}
        for distance, onset, voice in pairs:
            if onset in matched or voice in matched.values():
                continue
            if distance > max_interval and len(voices) < max_voices:
                continue
            matched[onset] = voice
        for onset, pitch in enumerate(pitches):
            if onset in matched:
                voice = matched[onset]
                steps.append(int(np.clip(pitch - voices[voice], -max_interval, max_interval)))
                voices[voice] = pitch
            elif len(voices) < max_voices:
                voices.append(pitch)
    return steps


def note_statistics(frames: np.ndarray, midi: np.ndarray, config: NoteEmbedderConfig) -> dict:
    """Detected onsets (frame of hop_seconds, MIDI pitch; sorted by frame) -> {"pitch_class": [13], "interval": [2I + 2], "ioi": [B + 1]}.

    Onsets within one frame of each other form one onset time (chords, slightly spread attacks); the
    intervals are those of `voice_intervals`.
    """
    midi = np.asarray(midi, dtype=np.int64)
    frames = np.asarray(frames, dtype=np.int64)
    groups: list[np.ndarray] = []
    start = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i] - frames[i - 1] > 1:
            groups.append(np.arange(start, i))
            start = i
    intervals = voice_intervals([np.unique(midi[g]) for g in groups], config.max_voices, config.max_interval)
    times = np.array([frames[g].mean() for g in groups]) * config.hop_seconds
    low, high = map(math.log, config.ioi_range)
    iois = np.diff(times)
    ioi_bins = np.clip(np.floor((np.log(np.maximum(iois, 1e-6)) - low) / (high - low) * config.ioi_bins),
                       0, config.ioi_bins - 1).astype(np.int64)
    return {
        "pitch_class": _histogram(midi % 12, 12),
        "interval": _histogram(np.asarray(intervals, dtype=np.int64) + config.max_interval, 2 * config.max_interval + 1),
        "ioi": _histogram(ioi_bins, config.ioi_bins),
    }


def statistics_vector(stats: dict, weights: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)) -> np.ndarray:
    """The embedding of note statistics: each histogram's square root (a unit vector) times sqrt(its weight), concatenated.

    weights sum to 1, so the vector is a unit vector and the cosine of two is sum_k w_k * affinity_k.
    """
    return np.concatenate([math.sqrt(w) * np.sqrt(stats[name]) for name, w in zip(BLOCKS, weights)])


def block_distances(stats: list[dict]) -> dict[str, np.ndarray]:
    """Note statistics of G clips -> {block: [G, G] distances 1 - Bhattacharyya affinity}."""
    roots = {name: np.sqrt(np.stack([s[name] for s in stats])) for name in BLOCKS}
    return {name: 1.0 - r @ r.T for name, r in roots.items()}


def equal_spread_weights(distances: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """Block weights (sum 1) inversely proportional to the standard deviation of each block's distances.

    distances: {block: 1-D distances over the same pairs}. The weighted sum of the block distances then
    varies alike with each block, whatever the blocks' own scales.
    """
    spread = np.array([np.std(distances[name]) for name in BLOCKS], dtype=np.float64)
    if not (np.isfinite(spread).all() and (spread > 1e-12).all()):  # a constant block: rounding, not spread
        raise UserError(f"cannot fit block weights: a block's distances do not vary ({dict(zip(BLOCKS, spread))})")
    weights = 1.0 / spread
    return tuple(float(w) for w in weights / weights.sum())


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
    def onset_probabilities(self, waveforms: torch.Tensor) -> torch.Tensor:
        """waveforms [N, S] at sample_rate -> onset probabilities [N, num_pitches, T].

        One clip at a time, like the spectrogram: GroupNorm makes each clip's output its own, and one
        clip's activations (5 MB for 17 s) stay in cache where a batch's do not (the same values, faster).
        """
        was_training = self.training
        self.eval()
        device = self.transcriber.pitch_filters.device
        out = [torch.sigmoid(self.transcriber(self.transcriber.spectrogram(clip[None].to(device)))[0]).cpu()
               for clip in waveforms]
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
        vectors = [statistics_vector(note_statistics(frames, midi, self.config), self.config.block_weights)
                   for frames, midi in self.notes(waveforms, sample_rate)]
        return torch.from_numpy(np.stack(vectors)).float()
