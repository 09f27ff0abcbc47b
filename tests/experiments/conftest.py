"""Fixtures of the experiment tests: a tiny CLAP and a small reward embedder, built once per session.

    .venv/bin/python -m pytest -q tests/experiments
"""

import pytest
import torch


@pytest.fixture(scope="session")
def clap_dir(tmp_path_factory):
    """A tiny random CLAP with a word-level tokenizer, so it also scores text."""
    from musicgen_cfg.tiny import save_tiny_clap

    return save_tiny_clap(tmp_path_factory.mktemp("clap") / "clap")


@pytest.fixture(scope="session")
def reward_dir(tmp_path_factory):
    """A small random contrastive embedder: the stand-in for the trained reward embedder."""
    from rl.embedders import ContrastiveEmbedderConfig, ContrastiveMusicEmbedder

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("reward") / "embedder"
    config = ContrastiveEmbedderConfig(channels=(4, 8), embedding_dim=8, n_mels=16, chunk_seconds=0.5)
    ContrastiveMusicEmbedder(config).save(directory)
    return directory
