"""Tests for rl/embedders.py and rl/train_embedder.py on synthetic tone sequences and a tiny random CLAP.

Run: .venv/bin/python -m pytest -q tests/rl/test_embedders.py
"""

import json
import math
import shlex

import numpy as np
import pytest
import soundfile
import torch

from musicgen_cfg.checkpoint import file_sha256
from musicgen_cfg.errors import UserError
from musicgen_cfg.world import corpus
from rl import embedders
from rl.embedders import (
    ContrastiveEmbedderConfig,
    ContrastiveMusicEmbedder,
    load_embedder,
    resample,
)
from rl.train_embedder import (
    clips_to_log_mels,
    info_nce_loss,
    sample_positive_pairs,
    semi_hard_triplet_loss,
    split_clips,
    train,
)
from rl.train_embedder_options import EmbedderTrainConfig

SMALL = ContrastiveEmbedderConfig(chunk_seconds=0.5, channels=(8, 16, 32), embedding_dim=32)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machines are shared, and training runs are only reproducible per thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone_sequence(seed: int, seconds: float, sample_rate: int = 16000) -> torch.Tensor:
    """A random little piece [samples]: its own timbre (harmonic weights), scale (5 pitches) and note
    length; notes drawn from the scale. Different seeds sound like different music."""
    rng = np.random.default_rng(seed)
    harmonics = rng.uniform(0, 1, 6) ** 2
    scale = rng.choice(np.arange(48, 84), 5, replace=False)
    note_seconds = rng.uniform(0.1, 0.35)
    t = np.arange(int(note_seconds * sample_rate)) / sample_rate
    envelope = np.exp(-t * rng.uniform(2, 12))
    notes = []
    for _ in range(math.ceil(seconds / note_seconds)):
        freq = 440.0 * 2 ** ((rng.choice(scale) - 69) / 12)
        wave = sum(w * np.sin(2 * np.pi * freq * (h + 1) * t) for h, w in enumerate(harmonics))
        notes.append(envelope * wave)
    audio = np.concatenate(notes)[: int(seconds * sample_rate)]
    return torch.from_numpy(0.5 * audio / np.abs(audio).max()).float()


@pytest.mark.parametrize("orig, new", [(44100, 16000), (16000, 48000), (32000, 16000)])
def test_resample_preserves_a_sine(orig, new):
    seconds = 0.5
    sine = torch.sin(2 * math.pi * 440 * torch.arange(int(orig * seconds)) / orig)[None]
    out = resample(sine, orig, new)
    expected = torch.sin(2 * math.pi * 440 * torch.arange(int(new * seconds)) / new)
    assert out.shape == (1, int(new * seconds))
    assert (out[0, 100:-100] - expected[100:-100]).abs().max() < 1e-2  # edges see the zero padding


def test_embeddings_are_unit_vectors_for_any_length_and_rate():
    torch.manual_seed(0)
    model = ContrastiveMusicEmbedder()
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 2_000_000
    for seconds, rate in [(0.02, 16000), (1.0, 16000), (4.5, 32000), (3.0, 44100)]:
        waves = torch.stack([tone_sequence(s, seconds, rate) for s in range(3)])
        vectors = model.embed(waves, sample_rate=rate)
        assert vectors.shape == (3, 128)
        assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_embedding_ignores_playback_gain():
    model = ContrastiveMusicEmbedder(SMALL)
    wave = tone_sequence(1, 2.0)[None]
    assert torch.allclose(model.embed(wave, 16000), model.embed(0.1 * wave, 16000), atol=1e-4)


def test_save_load_round_trip_gives_identical_embeddings(tmp_path):
    torch.manual_seed(0)
    model = ContrastiveMusicEmbedder(SMALL)
    waves = torch.stack([tone_sequence(s, 1.3) for s in range(2)])
    out = tmp_path / "embedder"
    model.save(out)  # a first version that the second save must replace
    digest = model.save(out, manifest={"command": "test"})
    loaded = load_embedder(str(out))
    assert isinstance(loaded, ContrastiveMusicEmbedder) and loaded.config == SMALL
    assert torch.equal(loaded.embed(waves, 16000), model.embed(waves, 16000))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["weights_sha256"] == digest == file_sha256(out / "model.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedder"]  # no temporary directories left
    assert (out / "model.safetensors").stat().st_mode & 0o044 == 0o044  # readable by others, not owner-only


def test_losses_prefer_matching_pairs():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    noise = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    assert info_nce_loss(a, a, 0.1) < info_nce_loss(a, noise, 0.1)
    assert semi_hard_triplet_loss(a, a, 0.2) < semi_hard_triplet_loss(a, noise, 0.2)


@pytest.mark.parametrize("loss, lr, steps", [("infonce", 3e-3, 60), ("triplet", 1e-3, 100)])
@pytest.mark.slow  # 60-100 training steps
def test_short_training_on_synthetic_music_lowers_the_loss(loss, lr, steps):
    torch.manual_seed(0)
    model = ContrastiveMusicEmbedder(SMALL)
    mels, skipped = clips_to_log_mels(
        model, [tone_sequence(s, 1.5) for s in range(40)] + [torch.zeros(100)], 16000
    )
    assert skipped == 1  # the 100-sample clip cannot give two chunks
    train_mels, heldout_mels = split_clips(mels, heldout=8, seed=0)
    config = EmbedderTrainConfig(
        steps=steps, batch_size=16, lr=lr, warmup_steps=5, loss=loss, eval_every=steps
    )
    metrics = train(model, train_mels, {"held-out": heldout_mels}, config, log=lambda message: None)
    losses = metrics["losses"]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    accuracy = metrics["heldout_accuracy"]["held-out"]
    assert accuracy[steps] >= accuracy[0]


def _run_cli(argv):
    from musicgen_cfg import cli

    return cli.run(argv)


def test_cli_trains_from_an_audio_dir_and_writes_a_manifest(tmp_path):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    for seed in range(12):
        rate = 16000 if seed % 2 else 22050
        soundfile.write(
            audio_dir / f"clip{seed}.{'wav' if seed % 3 else 'flac'}",
            tone_sequence(seed, 4.5, rate).numpy(),
            rate,
        )
    out = tmp_path / "embedder"
    argv = [
        "embedder",
        "train",
        "--audio-dir",
        str(audio_dir),
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--heldout",
        "4",
        "--eval-every",
        "3",
    ]
    assert _run_cli(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["files"] == 12 and manifest["data"]["train_clips"] == 8
    assert manifest["data"]["heldout_clips"] == {"held-out": 4}
    assert manifest["weights_sha256"] == file_sha256(out / "model.safetensors")
    assert manifest["command"].startswith(f"musicgen-cfg embedder train --audio-dir {audio_dir} --out {out}")
    vectors = load_embedder(str(out)).embed(tone_sequence(0, 3.0)[None], 16000)
    assert vectors.shape == (1, 128)
    # The recorded command rebuilds the same weights, bit for bit.
    rerun = shlex.split(manifest["command"])[1:]
    rerun[rerun.index("--out") + 1] = str(tmp_path / "rebuilt")
    assert "--steps" in rerun and "--threads" in rerun
    assert _run_cli(rerun) == 0
    assert (
        json.loads((tmp_path / "rebuilt" / "manifest.json").read_text())["weights_sha256"]
        == manifest["weights_sha256"]
    )


def test_same_group_batches_draw_only_from_the_group():
    mels = [torch.full((4, 10), float(i)) for i in range(6)]
    gen = torch.Generator().manual_seed(0)
    a, b = sample_positive_pairs(mels, 4, chunk_frames=3, generator=gen, candidates=[1, 4])
    assert a.shape == (2, 4, 3) and a.dtype == torch.float32
    assert sorted(a[:, 0, 0].tolist()) == [1.0, 4.0] and torch.equal(a[:, 0, 0], b[:, 0, 0])


@pytest.mark.slow  # the default world: loads the shipped model, synthesizes and embeds clips (~9 s)
def test_cli_trains_on_the_default_world(tmp_path):
    out = tmp_path / "embedder"
    argv = [
        "embedder",
        "train",
        "--model",
        "default",
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--clips",
        "8",
        "--heldout",
        "4",
        "--clip-seconds",
        "3",
        "--chunk-seconds",
        "1",
        "--eval-every",
        "2",
    ]
    assert _run_cli(argv) == 0
    data = json.loads((out / "manifest.json").read_text())["data"]
    assert data["train_clips"] == 8
    assert data["heldout_clips"] == {"held-out": 4, "same-prompt held-out": 4}
    assert data["dataset_sha256"] == file_sha256(corpus.DEFAULT_PATH)
    assert len(data["instruments"]) >= 2  # rendered with varied timbres


def test_cli_rejects_bad_input(tmp_path):
    with pytest.raises(UserError, match="no .wav or .flac"):
        _run_cli(["embedder", "train", "--audio-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    base = ["embedder", "train", "--model", "default", "--out", str(tmp_path / "o")]
    with pytest.raises(UserError, match="batch-size"):
        _run_cli([*base, "--batch-size", "1"])
    with pytest.raises(UserError, match="--kind notes learns from rendered scores"):
        _run_cli(["embedder", "train", "--audio-dir", str(tmp_path), "--kind", "notes", "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="shipped assets"):
        _run_cli(["embedder", "train", "--model", "default", "--out", "musicgen_cfg/assets/default/embedder"])
    with pytest.raises(UserError, match="clip-seconds"):
        EmbedderTrainConfig(clip_seconds=3.0, chunk_seconds=2.0)


def _tiny_clap_dir(tmp_path, fusion: bool):
    from musicgen_cfg.tiny import save_tiny_clap

    return save_tiny_clap(tmp_path / "clap", fusion=fusion)


@pytest.mark.parametrize("fusion", [False, True])
def test_clap_adapter_returns_deterministic_unit_vectors(tmp_path, fusion):
    embedder = load_embedder(f"clap:{_tiny_clap_dir(tmp_path, fusion)}")
    assert isinstance(embedder, embedders.ClapAudioEmbedder) and embedder.sample_rate == 48000
    waves = torch.stack([tone_sequence(s, 2.5) for s in range(3)])  # longer than the 1 s window
    vectors = embedder.embed(waves, sample_rate=16000)
    assert vectors.shape == (3, 16)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(vectors, embedder.embed(waves, sample_rate=16000))
    assert embedder.embed(waves[:, :4000], sample_rate=16000).shape == (3, 16)


def test_bad_specs_give_clear_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown embedder 'no/such/thing'"):
        load_embedder("no/such/thing")
    with pytest.raises(UserError, match="not an embedder directory"):
        load_embedder(str(tmp_path))
    with pytest.raises(UserError, match="needs a directory or hub id"):
        load_embedder("clap:")
    with pytest.raises(UserError, match=f"cannot load CLAP model '{tmp_path}'"):
        load_embedder(f"clap:{tmp_path}")
    monkeypatch.setattr(embedders, "DEFAULT_EMBEDDER_DIR", tmp_path / "missing")
    with pytest.raises(UserError, match="default embedder is missing"):
        load_embedder("default")
    broken = tmp_path / "broken"
    ContrastiveMusicEmbedder(SMALL).save(broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot load embedder weights"):
        load_embedder(str(broken))


@pytest.mark.slow  # the shipped embedder on rendered clips
def test_shipped_default_embedder_tells_different_music_apart():
    from musicgen_cfg.world.codec import SymbolicCodec
    from rl.diversity import pairwise_diversity

    embedder = load_embedder("default")
    manifest = json.loads((embedders.DEFAULT_EMBEDDER_DIR / "manifest.json").read_text())
    assert manifest["weights_sha256"] == file_sha256(
        embedders.DEFAULT_EMBEDDER_DIR / "model.safetensors"
    )
    codes = torch.from_numpy(corpus.load_dataset("val").codes(list(range(0, 200, 10))).astype("int64"))
    halves = torch.stack([codes[:, :, :64], codes[:, :, 64:]], dim=1).flatten(0, 1)  # [2 * 20, 4, 64]
    audio = SymbolicCodec().decode(halves, ["piano at 100 bpm"] * len(halves))
    vectors = embedder.embed(audio, 16000).view(20, 2, -1)
    same_piece = pairwise_diversity(vectors).mean()  # two passages of one segment
    different = pairwise_diversity(torch.stack([vectors[:10, 0], vectors[10:, 0]], dim=1)).mean()
    assert different > same_piece + 0.2, (same_piece, different)


def test_the_rebuild_command_of_the_shipped_embedder_parses_as_the_same_options():
    from musicgen_cfg import cli
    from rl.train_embedder import rebuild_command

    argv = ["embedder", "train", "--model", "default", "--out", "musicgen_cfg/assets/default/embedder", "--rebuild-shipped"]
    _, args = cli.parse(argv)
    config = EmbedderTrainConfig(**{name: getattr(args, name) for name in EmbedderTrainConfig.__dataclass_fields__})
    _, again = cli.parse(shlex.split(rebuild_command(args, config))[1:])
    assert again == args and again.rebuild_shipped and again.kind == "notes"
