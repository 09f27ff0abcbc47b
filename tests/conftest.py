"""Shared fixtures: a tiny random real-MusicGen checkpoint saved to a temp dir (no network)."""

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tiny models gain nothing from threads, and one avoids oversubscription; `make test-numerics` sets
# MUSICGEN_CFG_TEST_THREADS=2 to run the numerics-sensitive tests under another thread count.
THREADS = int(os.environ.get("MUSICGEN_CFG_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def one_thread():
    """`train` and `pretrain` set torch's thread count from their config (2 by default): later tests must
    not inherit it (the blocking of a CPU matmul, so its last bits, depend on the thread count)."""
    yield
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from musicgen_cfg.tiny import save_tiny_musicgen

    return save_tiny_musicgen(tmp_path_factory.mktemp("tiny") / "musicgen")


@pytest.fixture(scope="session")
def tiny_hf(tiny_dir):
    from transformers import MusicgenForConditionalGeneration

    return MusicgenForConditionalGeneration.from_pretrained(tiny_dir).eval()


@pytest.fixture()
def tiny_model(tiny_dir):
    from musicgen_cfg.model import load_model

    return load_model(str(tiny_dir))


def free_port() -> int:
    """A free TCP port on localhost, for servers launched by tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
