"""Music embedders for the diversity reward: waveform -> unit vector; "different music" = far apart.

`load_embedder(spec)` is the entry point (spec: "default" = the shipped note-hearing reward embedder of
rl/note_embedder.py, "spectral" = the fixed spectral one of rl/spectral_embedder.py (the default world's
held-out measure), a directory written by `musicgen-cfg embedder train`, or "clap:<dir-or-hub-id>").
Every embedder resamples its input itself,
so callers pass audio at whatever rate their codec produces:

    embedder = load_embedder("default")
    vectors = embedder.embed(waveforms, sample_rate=16000)   # [N, samples] -> [N, D], unit norm

Train the note embedder or the contrastive log-mel one with `musicgen-cfg embedder train` (rl/train_embedder.py);
measure what any embedder hears with `musicgen-cfg embedder check SPEC`.
"""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from musicgen_cfg.checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_directory, file_sha256
from musicgen_cfg.errors import UserError

DEFAULT_EMBEDDER_DIR = (
    Path(__file__).resolve().parent.parent / "musicgen_cfg" / "assets" / "default" / "embedder"
)
CONTRASTIVE_KIND = "contrastive-music"  # the "embedder" field of our config.json
MANIFEST_NAME = "manifest.json"


class Embedder(Protocol):
    """What the diversity reward needs from an embedder."""

    sample_rate: int  # the rate the embedder works at; inputs at other rates are resampled

    def embed(self, waveforms: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """waveforms: float32 [N, samples] in [-1, 1] at `sample_rate` -> unit vectors [N, D] (no grad)."""
        ...


def resample(
    waveforms: torch.Tensor, orig_rate: int, new_rate: int, zero_crossings: int = 16
) -> torch.Tensor:
    """Band-limited polyphase resampling with a Hann-windowed sinc. waveforms: [N, S] -> [N, ceil(S*new/orig)].

    The rate ratio is reduced to new/orig = up/down; each of the `up` output phases is a conv1d with
    stride `down` against its own shifted sinc kernel. The cutoff sits at 95% of the lower Nyquist
    rate so nothing aliases into the output.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return waveforms
    common = math.gcd(orig_rate, new_rate)
    down, up = orig_rate // common, new_rate // common
    cutoff = 0.95 * min(down, up)  # in units where the input rate is `down`
    half_width = math.ceil(zero_crossings * down / cutoff)
    taps = torch.arange(-half_width, half_width + down, dtype=torch.float64)[None] / down
    phases = -torch.arange(up, dtype=torch.float64)[:, None] / up
    t = ((phases + taps) * cutoff).clamp(-zero_crossings, zero_crossings)  # [up, taps], in zero crossings
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    kernels = torch.special.sinc(t) * window * (cutoff / down)
    kernels = kernels.to(waveforms.dtype).to(waveforms.device)[:, None]  # [up, 1, taps]
    num, length = waveforms.shape
    padded = F.pad(waveforms[:, None], (half_width, half_width + down))
    out = F.conv1d(padded, kernels, stride=down)  # [N, up, frames]
    return out.transpose(1, 2).reshape(num, -1)[:, : math.ceil(length * up / down)]


def chunk_starts(total: int, chunk: int) -> list[int]:
    """Evenly spaced starts of windows of length `chunk` covering [0, total); one window if it fits."""
    if total <= chunk:
        return [0]
    count = math.ceil(total / chunk)
    return torch.linspace(0, total - chunk, count).round().long().tolist()


def _mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular filters equally spaced on the HTK mel scale: [n_fft // 2 + 1, n_mels]."""

    def to_mel(hz):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    def to_hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    bins_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = to_hz(torch.linspace(to_mel(torch.tensor(f_min)), to_mel(torch.tensor(f_max)), n_mels + 2))
    edges = edges.double()
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_hz[:, None] - lower) / (center - lower)
    falling = (upper - bins_hz[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


@dataclass
class ContrastiveEmbedderConfig:
    """Front end and network of the contrastive music embedder (saved as its config.json)."""

    sample_rate: int = field(default=16000, metadata={"help": "rate the embedder works at (Hz)"})
    n_fft: int = field(default=512, metadata={"help": "FFT size of the spectrogram"})
    win_length: int = field(default=400, metadata={"help": "analysis window (25 ms at 16 kHz)"})
    hop_length: int = field(default=160, metadata={"help": "frame hop (10 ms at 16 kHz)"})
    n_mels: int = field(default=64, metadata={"help": "mel bands"})
    f_min: float = field(default=30.0, metadata={"help": "lowest mel band edge (Hz)"})
    f_max: float = field(default=8000.0, metadata={"help": "highest mel band edge (Hz), <= sample_rate / 2"})
    top_db: float = field(default=80.0, metadata={"help": "dynamic range kept below each chunk's peak (dB)"})
    chunk_seconds: float = field(default=2.0, metadata={"help": "length of the chunks a clip is cut into"})
    channels: tuple[int, ...] = field(
        default=(16, 32, 64, 128, 192),
        metadata={"help": "conv channels per stage (each stage halves time and freq)"},
    )
    embedding_dim: int = field(default=128, metadata={"help": "output dimension D"})

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        positive = {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "win_length": self.win_length,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "chunk_seconds": self.chunk_seconds,
            "embedding_dim": self.embedding_dim,
            "top_db": self.top_db,
        }
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"embedder config: {name} must be positive, got {value}")
        if self.win_length > self.n_fft:
            raise UserError(f"embedder config: win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise UserError(
                f"embedder config: need 0 <= f_min < f_max <= sample_rate / 2, got {self.f_min}, {self.f_max}"
            )
        if not self.channels or min(self.channels) <= 0:
            raise UserError(f"embedder config: channels must be positive, got {self.channels}")

    @property
    def chunk_frames(self) -> int:
        return round(self.chunk_seconds * self.sample_rate / self.hop_length)


class ContrastiveMusicEmbedder(nn.Module):
    """Log-mel chunks -> small conv net -> L2-normalised D-vector; a clip is the mean of its chunks.

    Each chunk's log-mel is standardised on its own, which makes the embedding blind to playback gain:
    the diversity reward then cannot be raised by generating louder or quieter copies of one piece.
    GroupNorm rather than BatchNorm, because batch statistics leak information between the positives
    of a contrastive batch.
    """

    kind = CONTRASTIVE_KIND

    def __init__(self, config: ContrastiveEmbedderConfig | None = None):
        super().__init__()
        self.config = config or ContrastiveEmbedderConfig()
        cfg = self.config
        self.register_buffer(
            "mel_filters",
            _mel_filterbank(cfg.n_fft, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max),
            persistent=False,
        )
        self.register_buffer("window", torch.hann_window(cfg.win_length), persistent=False)
        stages, in_channels = [], 1
        for out_channels in cfg.channels:
            stages += [
                # Strided convolutions rather than pooling: 4x less work per stage, which is what lets
                # the embedder train in minutes on one CPU core. Any input size >= 1 frame works.
                nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(min(8, out_channels), out_channels),
                nn.ReLU(),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
                nn.GroupNorm(min(8, out_channels), out_channels),
                nn.ReLU(),
            ]
            in_channels = out_channels
        self.conv = nn.Sequential(*stages)
        # Mean and max over time: the mean sees the overall timbre, the max catches salient events.
        self.head = nn.Sequential(
            nn.Linear(2 * in_channels, 2 * cfg.embedding_dim),
            nn.ReLU(),
            nn.Linear(2 * cfg.embedding_dim, cfg.embedding_dim),
        )

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """waveforms [N, S] at `sample_rate` -> natural-log mel power [N, n_mels, 1 + S // hop]."""
        cfg = self.config
        spec = torch.stft(
            waveforms.float(),
            cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=True,
            pad_mode="constant",  # reflect padding fails on clips shorter than n_fft / 2
            return_complex=True,
        )
        mel = (spec.abs() ** 2).transpose(1, 2) @ self.mel_filters  # [N, frames, n_mels]
        return torch.log(mel + 1e-10).transpose(1, 2)

    def embed_log_mel(self, chunks: torch.Tensor) -> torch.Tensor:
        """chunks: log-mel [B, n_mels, frames] (any frames >= 1) -> unit vectors [B, D], with grad."""
        floor = chunks.amax(dim=(1, 2), keepdim=True) - self.config.top_db * math.log(10) / 10
        x = torch.maximum(chunks, floor)
        x = (x - x.mean(dim=(1, 2), keepdim=True)) / (x.std(dim=(1, 2), keepdim=True) + 1e-5)
        h = self.conv(x[:, None]).mean(dim=2)  # [B, C, frames']: average over frequency
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
        return F.normalize(self.head(pooled), dim=-1)

    @torch.no_grad()
    def embed(self, waveforms: torch.Tensor, sample_rate: int, batch_chunks: int = 64) -> torch.Tensor:
        """waveforms float32 [N, S] at `sample_rate` -> unit vectors [N, D].

        Clips longer than chunk_seconds are cut into evenly spaced (possibly overlapping) chunks covering
        the whole clip, embedded one by one and averaged; shorter clips form one chunk.
        """
        if waveforms.dim() != 2 or waveforms.shape[1] == 0:
            raise ValueError(f"expected waveforms [N, samples > 0], got {tuple(waveforms.shape)}")
        was_training = self.training
        self.eval()
        device = self.mel_filters.device
        audio = resample(waveforms.to(device=device, dtype=torch.float32), sample_rate, self.sample_rate)
        mels = self.log_mel(audio)
        size = min(self.config.chunk_frames, mels.shape[2])
        starts = chunk_starts(mels.shape[2], size)
        chunks = torch.cat([mels[:, :, s : s + size] for s in starts])  # [len(starts) * N, n_mels, size]
        vectors = torch.cat([self.embed_log_mel(part) for part in chunks.split(batch_chunks)])
        self.train(was_training)
        return F.normalize(vectors.view(len(starts), len(waveforms), -1).mean(dim=0), dim=-1)

    def save(self, directory: str | Path, manifest: dict | None = None) -> str:
        return save_embedder(self, directory, manifest)

    @classmethod
    def load(cls, directory: str | Path) -> "ContrastiveMusicEmbedder":
        return load_embedder_dir(Path(directory))


def save_embedder(model: nn.Module, directory: str | Path, manifest: dict | None = None) -> str:
    """Write a trained embedder (`model.kind`, `model.config`, its weights) as config.json + model.safetensors
    (+ manifest.json with the weights' sha256) atomically. Returns the sha256 of model.safetensors."""
    with atomic_directory(Path(directory)) as tmp:
        config = {"embedder": model.kind, **asdict(model.config)}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
        digest = file_sha256(tmp / WEIGHTS_NAME)
        if manifest is not None:
            text = json.dumps({**manifest, "weights_sha256": digest}, indent=2, default=str)
            (tmp / MANIFEST_NAME).write_text(text + "\n")
    return digest


def embedder_classes() -> dict[str, type]:
    """config.json "embedder" kind -> the class that loads it (each has `kind`, `config`, a config dataclass)."""
    from rl.note_embedder import NoteEmbedder, NoteEmbedderConfig
    from rl.spectral_embedder import SpectralEmbedderConfig, SpectralStatsEmbedder

    return {CONTRASTIVE_KIND: (ContrastiveMusicEmbedder, ContrastiveEmbedderConfig),
            NoteEmbedder.kind: (NoteEmbedder, NoteEmbedderConfig),
            SpectralStatsEmbedder.kind: (SpectralStatsEmbedder, SpectralEmbedderConfig)}


def read_embedder_config(directory: Path):
    """(class, config) of a trained embedder directory, or None if `directory` is not one."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    classes = embedder_classes()
    if not isinstance(raw, dict) or raw.get("embedder") not in classes:
        return None
    cls, config_cls = classes[raw.pop("embedder")]
    try:
        return cls, config_cls(**raw)
    except TypeError as err:
        raise UserError(f"{path}: unexpected embedder config ({err})") from None


def load_embedder_dir(directory: Path):
    """The trained embedder saved in `directory` (any kind of `embedder_classes`), in eval mode."""
    found = read_embedder_config(directory)
    if found is None:
        raise UserError(
            f"{directory} is not an embedder directory (no {CONFIG_NAME} with an \"embedder\" kind of "
            f"{', '.join(embedder_classes())})"
        )
    cls, config = found
    model = cls(config)
    try:
        model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
    except (OSError, RuntimeError, SafetensorError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load embedder weights from {directory / WEIGHTS_NAME}: {first_line}") from None
    return model.eval()


class ClapAudioEmbedder:
    """The audio tower of a transformers `ClapModel` (e.g. laion/clap-htsat-unfused), 48 kHz.

    Clips longer than the feature extractor's max_length_s are cut into evenly spaced windows that fit
    it and averaged, so its random cropping never happens and embeddings are deterministic.
    """

    def __init__(self, model, feature_extractor):
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.sample_rate = int(feature_extractor.sampling_rate)
        # Unfused checkpoints take one mel channel ("rand_trunc" layout); fused ones take four ("fusion").
        self.truncation = "fusion" if model.config.audio_config.enable_fusion else "rand_trunc"

    @classmethod
    def from_pretrained(cls, source: str) -> "ClapAudioEmbedder":
        """Load from a local directory or a hub id; HF_HUB_OFFLINE=1 keeps transformers off the network."""
        from transformers import ClapFeatureExtractor, ClapModel

        try:
            model = ClapModel.from_pretrained(source, use_safetensors=True)  # never a pickle
            feature_extractor = ClapFeatureExtractor.from_pretrained(source)
        except Exception as err:  # transformers raises many types (OSError, ValueError, HF errors)
            text = str(err).strip()
            reason = text.splitlines()[0] if text else type(err).__name__
            raise UserError(f"cannot load CLAP model '{source}': {reason}") from None
        return cls(model, feature_extractor)

    @torch.no_grad()
    def embed(self, waveforms: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """waveforms float32 [N, S] at `sample_rate` -> unit vectors [N, projection_dim]."""
        if waveforms.dim() != 2 or waveforms.shape[1] == 0:
            raise ValueError(f"expected waveforms [N, samples > 0], got {tuple(waveforms.shape)}")
        audio = resample(waveforms.float().cpu(), sample_rate, self.sample_rate)
        window = min(int(self.feature_extractor.nb_max_samples), audio.shape[1])
        starts = chunk_starts(audio.shape[1], window)
        chunks = [audio[i, s : s + window].numpy() for s in starts for i in range(len(audio))]
        inputs = self.feature_extractor(
            chunks,
            sampling_rate=self.sample_rate,
            truncation=self.truncation,
            padding="repeatpad",
            return_tensors="pt",
        )
        # No window exceeds max length; the extractor still flags one at random in fusion mode.
        inputs["is_longer"] = torch.zeros_like(inputs["is_longer"])
        device = next(self.model.parameters()).device
        features = self.model.get_audio_features(**{k: v.to(device) for k, v in inputs.items()}).pooler_output
        vectors = features.float().cpu().view(len(starts), len(audio), -1).mean(dim=0)
        return F.normalize(vectors, dim=-1)


SPECTRAL_SPEC = "spectral"  # the fixed spectral embedder of rl/spectral_embedder.py (no weights)


def load_embedder(spec: str) -> Embedder:
    """ "default" | "spectral" | a directory saved by `musicgen-cfg embedder train` | "clap:<dir-or-hub-id>"."""
    if spec == SPECTRAL_SPEC:
        from rl.spectral_embedder import SpectralStatsEmbedder

        return SpectralStatsEmbedder()
    if spec == "default":
        if not (DEFAULT_EMBEDDER_DIR / CONFIG_NAME).is_file():
            raise UserError(
                f"the default embedder is missing from {DEFAULT_EMBEDDER_DIR}; rebuild it with the "
                f"command in its manifest (`musicgen-cfg embedder train --model default ...`)"
            )
        return load_embedder_dir(DEFAULT_EMBEDDER_DIR)
    if spec.startswith("clap:"):
        source = spec[len("clap:") :].strip()
        if not source:
            raise UserError(
                "embedder spec 'clap:' needs a directory or hub id, e.g. clap:laion/clap-htsat-unfused"
            )
        return ClapAudioEmbedder.from_pretrained(source)
    path = Path(spec).expanduser()
    if path.is_dir():
        if read_embedder_config(path) is None:
            raise UserError(
                f"{path} is not an embedder directory (no {CONFIG_NAME} with an \"embedder\" kind of "
                f"{', '.join(embedder_classes())}); for a CLAP model use clap:{spec}"
            )
        return load_embedder_dir(path)
    raise UserError(
        f"unknown embedder '{spec}': expected 'default', '{SPECTRAL_SPEC}', a directory saved by "
        f"`musicgen-cfg embedder train`, or 'clap:<dir-or-hub-id>'"
    )
