"""Offline metrics of real audio: the `encodec-emb` embedder and distances between sets of clips (FAD, KAD).

    musicgen-cfg evaluate runs/base-cfg3 runs/merged-gen --reference-dir my_reference_audio

- `EncodecEmbedder` ("encodec-emb", as fadtk names it): EnCodec's encoder latents of the model's own
  codec, mean-pooled over time -> one vector per clip. It needs no download, and no training run ever
  saw it, so it serves as the held-out diversity embedder of real-MusicGen runs.
- `frechet_distance` (FAD): ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between the Gaussian
  fits of two sets of embeddings.
- `kernel_distance` (KAD, Chung et al. 2025): the unbiased MMD^2 with a Gaussian kernel whose bandwidth
  is the median pairwise distance of the reference set (no x1000 scaling). Unlike FAD it is unbiased
  in the set sizes and assumes no distribution shape: two sets drawn from one distribution give 0 on
  average (one estimate can be slightly negative).
"""

from pathlib import Path

import numpy as np
import torch

from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.evaluate_options import ENCODEC_EMBEDDING

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class EncodecEmbedder:
    """Mean-pooled encoder latents of a transformers EncodecModel (the codec of the MusicGen being evaluated)."""

    name = ENCODEC_EMBEDDING

    def __init__(self, encodec):
        from rl.embedders import resample

        self.model = encodec.eval()
        self.sample_rate = int(encodec.config.sampling_rate)
        self.channels = int(encodec.config.audio_channels)
        self._resample = resample

    @torch.no_grad()
    def features(self, waveforms: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """float32 [N, S] at `sample_rate` -> latents [N, D] (mean over the encoder's frames; not normalised)."""
        if waveforms.dim() != 2 or waveforms.shape[1] == 0:
            raise ValueError(f"expected waveforms [N, samples > 0], got {tuple(waveforms.shape)}")
        audio = self._resample(waveforms.float().cpu(), sample_rate, self.sample_rate)
        device = next(self.model.parameters()).device
        x = audio[:, None].expand(-1, self.channels, -1).to(device)  # mono -> the codec's channel count
        return self.model.encoder(x).float().mean(dim=-1).cpu()  # [N, D, frames] -> [N, D]

    def embed(self, waveforms: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """The Embedder interface (rl/embedders.py): unit vectors [N, D]."""
        return torch.nn.functional.normalize(self.features(waveforms, sample_rate), dim=-1)


def clip_features(embedder, clips: list[np.ndarray], sample_rate: int, batch_size: int = 16) -> np.ndarray:
    """One embedding per clip [N, D]: `features` (unnormalised) where the embedder has them, else `embed`.

    Clips of equal length are batched, at most `batch_size` at a time (EnCodec's first layers on a
    batch of 10 s clips at 32 kHz take ~80 MB per clip), so no zero padding enters a mean."""
    extract = getattr(embedder, "features", embedder.embed)
    out: list[np.ndarray | None] = [None] * len(clips)
    for length in sorted({len(c) for c in clips}):
        rows = [i for i, c in enumerate(clips) if len(c) == length]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            vectors = extract(torch.from_numpy(np.stack([clips[i] for i in chunk]).astype(np.float32)), sample_rate)
            for row, vector in zip(chunk, vectors.numpy()):
                out[row] = vector
    return np.stack(out)


def gaussian_fit(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of embeddings [N >= 2, D]."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need embeddings [N >= 2, D], got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b): means [D], covariances [D, D] (PSD).

    tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix S_a^(1/2) S_b S_a^(1/2), which has the same eigenvalues: stable for the singular
    covariances of sets smaller than the embedding size, where a general matrix square root is not."""
    values, vectors = np.linalg.eigh(sigma_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sigma_b @ root_a), 0.0, None)).sum()
    distance = float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * cross)
    return max(distance, 0.0)  # rounding can give -1e-12 for identical sets


def fad(embeddings: np.ndarray, reference: np.ndarray) -> float:
    """FAD between two sets of embeddings [N, D] and [M, D]."""
    return frechet_distance(*gaussian_fit(embeddings), *gaussian_fit(reference))


def median_bandwidth(reference: np.ndarray) -> float:
    """Median pairwise Euclidean distance of reference embeddings [M >= 2, D] (1 if they all coincide)."""
    x = np.asarray(reference, dtype=np.float64)
    distances = np.sqrt(np.maximum(_squared_distances(x, x), 0.0))[np.triu_indices(len(x), k=1)]
    median = float(np.median(distances)) if len(distances) else 0.0
    return median if median > 0 else 1.0


def kernel_distance(embeddings: np.ndarray, reference: np.ndarray, bandwidth: float | None = None) -> float:
    """KAD: unbiased MMD^2 between [N >= 2, D] and [M >= 2, D] under k(x, y) = exp(-|x - y|^2 / (2 bw^2)),
    bw = the reference set's median pairwise distance unless given."""
    x, y = np.asarray(embeddings, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("the unbiased MMD needs >= 2 embeddings in each set")
    bw = median_bandwidth(y) if bandwidth is None else bandwidth
    if not bw > 0:
        raise ValueError(f"bandwidth must be positive, got {bw}")
    kernel = lambda a, b: np.exp(-_squared_distances(a, b) / (2 * bw**2))  # noqa: E731
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T


def reference_files(directory: str | Path) -> list[Path]:
    """Audio files (wav / flac / ogg, any depth) of a reference set, sorted; at least two."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--reference-dir {directory} is not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise UserError(f"--reference-dir {directory} holds {len(files)} audio files ({', '.join(AUDIO_SUFFIXES)}); "
                        f"FAD and KAD need at least 2")
    return files


def read_clip(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 [S], sample rate) of an audio file; an unreadable one is a UserError."""
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as err:
        raise UserError(f"cannot read audio file {path}: {str(err).splitlines()[0]}") from None
    if len(audio) == 0:
        raise UserError(f"audio file {path} is empty")
    return audio.mean(axis=1), int(rate)


def embed_files(embedder, files: list[Path]) -> np.ndarray:
    """Embeddings [len(files), D] of audio files, each at its own sample rate."""
    clips = [read_clip(path) for path in files]
    rows = []
    for rate in sorted({rate for _, rate in clips}):
        members = [i for i, (_, r) in enumerate(clips) if r == rate]
        rows += list(zip(members, clip_features(embedder, [clips[i][0] for i in members], rate)))
    return np.stack([vector for _, vector in sorted(rows, key=lambda item: item[0])])
