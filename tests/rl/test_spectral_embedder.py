"""The fixed spectral embedder (the default world's held-out diversity measure): its chroma hears the pitch
class, its output has one size for any clip length, and gain does not move it."""

import math

import pytest
import torch

from rl.embedders import load_embedder
from rl.spectral_embedder import SpectralStatsEmbedder


def tone(midi: float, seconds: float = 2.0, rate: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return 0.2 * torch.sin(2 * math.pi * 440 * 2 ** ((midi - 69) / 12) * t) * (1 - torch.exp(-t * 50))


def test_the_spec_loads_the_spectral_embedder():
    assert isinstance(load_embedder("spectral"), SpectralStatsEmbedder)


def test_chroma_hears_the_pitch_class_in_any_octave():
    embedder = SpectralStatsEmbedder()
    vectors = embedder.embed(torch.stack([tone(60), tone(72), tone(66)]), 16000)
    chroma = torch.nn.functional.normalize(vectors[:, :12], dim=1)
    assert chroma[0].argmax() == 0 and chroma[2].argmax() == 6  # C and F-sharp
    assert (chroma[0] @ chroma[1]) > 0.95 > (chroma[0] @ chroma[2])


@pytest.mark.parametrize("seconds", [0.3, 2.0, 7.0])
def test_one_unit_vector_of_fixed_size_for_any_length(seconds):
    embedder = SpectralStatsEmbedder()
    vectors = embedder.embed(torch.stack([tone(60, seconds), 3 * tone(60, seconds)]), 16000)
    assert vectors.shape == (2, 13 + 2 * embedder.config.max_interval + 2 + int(1.9 * 16000 / 256) + 1)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(vectors[0], vectors[1], atol=1e-4)  # three times louder: the same statistics
