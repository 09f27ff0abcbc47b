"""A fixed spectral embedder of note content: the default world's held-out diversity measure.

    embedder = load_embedder("musicgen_cfg/assets/default/heldout_embedder")   # config.json only, no weights
    vectors = embedder.embed(waveforms, sample_rate=16000)                    # [N, samples] -> [N, D]

Claim 7 asks whether a diversity gain holds under an embedder the policy never trained against. The reward
(rl/note_embedder.py) transcribes notes with a learned net and counts them; this one learns nothing and
detects no notes, so the policy cannot have learned its errors, yet it hears the same three things
from the spectrum directly:

- chroma: the semitone spectrogram's power folded onto 12 pitch classes and averaged (harmony, key);
- interval profile: at each peak of the spectral-flux envelope, the flux spectrum is cross-correlated with
  the previous peak's over shifts of -12..+12 semitones (sharpened so that the strongest partials dominate):
  which pitch steps successive attacks take;
- rhythm: the autocorrelation of the spectral-flux envelope over lags up to `max_lag_seconds`.

Each block (with a "nothing to measure" entry) is L2-normalised and the three are concatenated over sqrt(3), as in
the reward embedder.
Measured sensitivity: `musicgen-cfg embedder check musicgen_cfg/assets/default/heldout_embedder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from musicgen_cfg.errors import UserError

SPECTRAL_KIND = "spectral-stats"


@dataclass
class SpectralEmbedderConfig:
    """The fixed front end and statistics of the spectral embedder (its config.json)."""

    sample_rate: int = field(default=16000, metadata={"help": "rate the embedder works at (Hz)"})
    n_fft: int = field(default=4096, metadata={"help": "FFT size (resolves semitones from MIDI 36 up)"})
    hop_length: int = field(default=256, metadata={"help": "frame hop (16 ms at 16 kHz)"})
    lowest_pitch: int = field(default=36, metadata={"help": "MIDI pitch of the lowest semitone band"})
    num_bins: int = field(default=72, metadata={"help": "semitone bands"})
    floor_db: float = field(default=40.0, metadata={"help": "dynamic range kept below each clip's peak (dB)"})
    peak_threshold: float = field(default=0.2, metadata={"help": "flux peaks above this fraction of the clip's highest"})
    sharpen: float = field(default=4.0, metadata={"help": "power applied to a peak's flux spectrum before correlating"})
    max_interval: int = field(default=12, metadata={"help": "interval profile over -this..+this semitones"})
    max_lag_seconds: float = field(default=1.9, metadata={"help": "longest lag of the flux autocorrelation (s)"})

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "num_bins", "floor_db", "sharpen", "max_interval",
                     "max_lag_seconds"):
            if not getattr(self, name) > 0:
                raise UserError(f"spectral embedder config: {name} must be positive, got {getattr(self, name)}")
        if not 0 < self.peak_threshold < 1:
            raise UserError(f"spectral embedder config: peak_threshold must be in (0, 1), got {self.peak_threshold}")


class SpectralStatsEmbedder(nn.Module):
    """Chroma, flux-peak interval profile and flux autocorrelation of a clip, each with a "nothing" entry:
    [N, S] -> unit vectors [N, 13 + (2I + 2) + (L + 1)]."""

    kind = SPECTRAL_KIND

    def __init__(self, config: SpectralEmbedderConfig | None = None):
        super().__init__()
        from rl.note_embedder import semitone_filters

        self.config = cfg = config or SpectralEmbedderConfig()
        self.register_buffer("filters", semitone_filters(cfg.n_fft, cfg.sample_rate, cfg.lowest_pitch, cfg.num_bins),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        fold = torch.zeros(cfg.num_bins, 12)
        fold[torch.arange(cfg.num_bins), (cfg.lowest_pitch + torch.arange(cfg.num_bins)) % 12] = 1.0
        self.register_buffer("fold", fold, persistent=False)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def interval_profile(self, flux: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """flux [P, T], its envelope [T] -> [2I + 1]: cross-correlation of successive flux peaks' spectra."""
        cfg, shifts = self.config, self.config.max_interval
        peaks = (envelope[1:-1] > envelope[:-2]) & (envelope[1:-1] >= envelope[2:])
        peaks &= envelope[1:-1] > cfg.peak_threshold * envelope.max()
        frames = torch.nonzero(peaks).flatten() + 1
        profile = torch.zeros(2 * shifts + 1)
        if len(frames) < 2:
            return profile
        spectra = torch.stack([flux[:, max(f - 1, 0) : f + 2].sum(dim=1) for f in frames.tolist()]) ** cfg.sharpen
        spectra = spectra / (spectra.sum(dim=1, keepdim=True) + 1e-12)
        later, earlier, bins = spectra[1:], spectra[:-1], spectra.shape[1]
        for step in range(-shifts, shifts + 1):
            if step >= 0:
                profile[step + shifts] = (later[:, step:] * earlier[:, : bins - step]).sum()
            else:
                profile[step + shifts] = (later[:, : bins + step] * earlier[:, -step:]).sum()
        return profile

    @torch.no_grad()
    def embed(self, waveforms: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """waveforms float32 [N, S] at `sample_rate` -> unit vectors [N, D]."""
        from rl.embedders import resample

        if waveforms.dim() != 2 or waveforms.shape[1] == 0:
            raise ValueError(f"expected waveforms [N, samples > 0], got {tuple(waveforms.shape)}")
        cfg = self.config
        audio = resample(waveforms.float().cpu(), sample_rate, cfg.sample_rate)
        spec = torch.stft(audio, cfg.n_fft, hop_length=cfg.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = ((spec.abs() ** 2).transpose(1, 2) @ self.filters).transpose(1, 2)  # [N, P, T]
        chroma = (power / (power.amax(dim=(1, 2), keepdim=True) + 1e-12)).mean(dim=2) @ self.fold
        log_power = torch.log(power + 1e-10)
        log_power = torch.maximum(log_power, log_power.amax(dim=(1, 2), keepdim=True) - cfg.floor_db * math.log(10) / 10)
        flux = torch.relu(log_power[:, :, 1:] - log_power[:, :, :-1])
        envelope = flux.sum(dim=1)
        intervals = torch.stack([self.interval_profile(f, e) for f, e in zip(flux, envelope)])
        centred = envelope - envelope.mean(dim=1, keepdim=True)
        lags = range(1, int(cfg.max_lag_seconds * cfg.sample_rate / cfg.hop_length) + 1)
        zero = centred.new_zeros(len(centred))  # lags beyond a short clip: nothing to correlate
        rhythm = torch.stack([(centred[:, k:] * centred[:, :-k]).mean(dim=1) if k < centred.shape[1] else zero
                              for k in lags], dim=1)
        rhythm = rhythm / (centred.pow(2).mean(dim=1, keepdim=True) + 1e-12)
        # A block with nothing to measure (silence, a single attack, no repetition) is its own "nothing" vector,
        # as in the reward embedder, so every embedding is a unit vector.
        blocks = [F.normalize(torch.cat([block, (block.abs().sum(dim=1, keepdim=True) < 1e-12).float()], dim=1), dim=1)
                  for block in (chroma, intervals, rhythm)]
        return torch.cat(blocks, dim=1) / math.sqrt(3)
