"""The diversity-reward pipeline (rl/reward.py): batch-independent per prompt, and gated against silence."""

import numpy as np
import pytest
import torch

from musicgen_cfg.errors import UserError
from musicgen_cfg.world.codec import SymbolicCodec
from rl.diversity import pairwise_diversity
from rl.reward import (
    AudioGate,
    CodesGate,
    OpenGate,
    codes_statistics,
    data_codes_gate,
    diversity_rewards,
    group_rewards,
    parse_gate_spec,
    reward_gate,
    silent_window_fraction,
)

G, FRAMES = 3, 32
# Three tempos (150, 70 and 184 bpm): rows of one batch decode to three different lengths.
PROMPTS = ["a fast reel", "a slow chorale", "a fiddle tune at 184 bpm"]


@pytest.fixture(scope="module")
def embedder():
    from rl.embedders import load_embedder

    return load_embedder("default")


@pytest.fixture(scope="module")
def segments():
    """Real music: [12, 4, FRAMES] codes from the shipped dataset's segments."""
    from musicgen_cfg.world.corpus import read_arrays

    codes = read_arrays()["codes"][::997][:12, :, :FRAMES]
    return torch.from_numpy(codes.astype(np.int64))


def rows_for(prompts):
    return [p for p in prompts for _ in range(G)]


@pytest.mark.slow  # the shipped embedder on every split of the batch
def test_a_prompts_rewards_do_not_depend_on_its_batch_or_the_process_split(segments, embedder):
    codec, gate = SymbolicCodec(), reward_gate("data", symbolic=True)
    codes = segments[: len(PROMPTS) * G]
    prompts = rows_for(PROMPTS)
    batched, music = diversity_rewards(codes, prompts, G, codec, embedder, gate)
    assert batched.shape == music.shape == (len(PROMPTS), G) and (batched > 0).all() and music.all()
    for p in range(len(PROMPTS)):
        rows = slice(p * G, (p + 1) * G)
        alone = diversity_rewards(codes[rows], prompts[rows], G, codec, embedder, gate).rewards
        assert torch.equal(alone[0], batched[p])
    # Another batch order, and the rows of each of 2 DDP processes (a contiguous block of whole prompts each).
    order = [2, 0, 1]
    permuted = torch.cat([codes[p * G : (p + 1) * G] for p in order])
    assert torch.equal(diversity_rewards(permuted, rows_for([PROMPTS[p] for p in order]), G, codec, embedder, gate).rewards,
                       batched[order])
    split = [diversity_rewards(codes[:G], prompts[:G], G, codec, embedder, gate).rewards,
             diversity_rewards(codes[G:], prompts[G:], G, codec, embedder, gate).rewards]
    assert torch.equal(torch.cat(split), batched)
    # What the trainer did before: decode the whole batch at once, padding the fast rows with silence. The note
    # embedder hears no notes in the padding, a spectrogram embedder does: that is what per-prompt decoding prevents.
    from rl.embedders import ContrastiveMusicEmbedder

    torch.manual_seed(0)
    spectral_net = ContrastiveMusicEmbedder().eval()
    per_prompt = diversity_rewards(codes, prompts, G, codec, spectral_net, gate).rewards
    padded = spectral_net.embed(codec.decode(codes, prompts), codec.sample_rate).view(len(PROMPTS), G, -1)
    assert not torch.allclose(pairwise_diversity(padded)[0], per_prompt[0], atol=1e-3)


def test_rows_of_one_group_must_share_their_prompt(segments, embedder):
    with pytest.raises(ValueError, match="not siblings"):
        diversity_rewards(segments[:G], ["a fast reel", "a fast reel", "a slow chorale"], G, SymbolicCodec(),
                          embedder, OpenGate())
    with pytest.raises(ValueError, match="G = 3"):
        diversity_rewards(segments[:4], ["a fast reel"] * 4, G, SymbolicCodec(), embedder, OpenGate())


def test_trainer_rewards_are_the_per_prompt_pipeline(tmp_path):
    from accelerate import Accelerator

    from musicgen_cfg.training.distillation import DistillConfig, Distiller

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    config = DistillConfig(model="default", prompts=str(tmp_path / "prompts.txt"), beta=15, generations=G,
                           num_frames=16, heldout_prompts=1, threads=1, tensorboard=False, out=str(tmp_path / "run"))
    distiller = Distiller(config, Accelerator(cpu=True))
    prompts = rows_for(PROMPTS[:2])
    codes = distiller.rollout(prompts, list(range(len(prompts))), from_teacher=False)
    rewards, music = distiller.diversity_rewards(codes, prompts)
    for p in range(2):
        rows = slice(p * G, (p + 1) * G)
        expected = group_rewards(distiller.student.codec.decode(codes[rows], prompts[rows]), 16000, codes[rows],
                                 distiller.embedder, distiller.gate)
        assert torch.equal(rewards[p], expected.rewards) and music[p].tolist() == expected.music.tolist()


# ---------------------------------------------------------------------------------------------- gate

def test_a_silent_sibling_no_longer_raises_its_groups_reward(segments, embedder):
    codec = SymbolicCodec()
    music = segments[:3]
    silent = torch.zeros(1, 4, FRAMES, dtype=torch.long)

    def group_mean(extra, gate):
        codes = torch.cat([music, extra])
        scored = group_rewards(codec.decode(codes, ["a fast reel"] * 4), codec.sample_rate, codes, embedder, gate)
        return scored.rewards.mean().item(), scored

    # Ungated (the paper's reward), silence pays more than copying a sibling: the hack this gate closes.
    assert group_mean(silent, OpenGate())[0] > group_mean(music[:1], OpenGate())[0]
    gate = reward_gate("data", symbolic=True)
    with_silence, scored = group_mean(silent, gate)
    assert scored.music.tolist() == [True, True, True, False] and scored.rewards[3] == 0
    assert with_silence < group_mean(music[:1], gate)[0]
    # The batched pipeline reports the gate per row: the trainer logs its mean as music_rate.
    codes = torch.cat([music, silent, music[:2], silent, silent])
    _, passed = diversity_rewards(codes, ["a fast reel"] * 4 + ["a slow chorale"] * 4, 4, codec, embedder, gate)
    assert passed.tolist() == [[True, True, True, False], [True, True, False, False]]


@pytest.mark.slow  # the gate's quantiles over the shipped dataset
def test_codes_gate_comes_from_the_real_data_and_rejects_near_empty_clips(segments):
    gate = data_codes_gate()
    assert 0 < gate.min_sounding_fraction < 1 and 0 < gate.min_onset_rate < 0.1
    assert gate.music(segments.numpy(), None, 16000).all()  # real segments are music
    one_note = np.zeros((1, 4, 128), dtype=np.int64)
    one_note[0, 0, 0], one_note[0, 0, 1:] = 40, 1  # a single onset held for 8 bars
    sparse = np.zeros((1, 4, 128), dtype=np.int64)
    sparse[0, 1, ::16] = 30  # a 16th note per bar: mostly silence
    assert not gate.music(np.concatenate([one_note, sparse, np.zeros_like(one_note)]), None, 16000).any()
    assert data_codes_gate(0.2).min_onset_rate >= gate.min_onset_rate  # a higher quantile is stricter


def test_codes_statistics_known_values():
    codes = np.zeros((1, 4, 8), dtype=np.int64)
    codes[0, 0, :4] = [10, 1, 1, 0]  # a note over frames 0-2
    codes[0, 2, 4:] = [1, 20, 1, 21]  # HOLD after a rest is a rest; notes over frames 5-7
    sounding, onset_rate = codes_statistics(codes)
    assert sounding.tolist() == [6 / 8] and onset_rate.tolist() == [3 / 8]


def test_audio_gate_and_silent_windows():
    rate = 1000
    t = torch.arange(rate) / rate
    tone = 0.5 * torch.sin(2 * torch.pi * 50 * t)
    half = tone.clone()
    half[: rate // 2 + 100] = 0  # 6 of 10 windows silent
    audio = torch.stack([tone, torch.zeros(rate), half])
    assert silent_window_fraction(audio, rate).tolist() == pytest.approx([0.0, 1.0, 0.6])
    assert AudioGate().music(None, audio, rate).tolist() == [True, False, False]
    assert AudioGate(max_silent_fraction=0.7).music(None, audio, rate).tolist() == [True, False, True]
    assert silent_window_fraction(tone[None, :30], rate).tolist() == [0.0]  # shorter than a window: one window


def test_gate_specs():
    assert parse_gate_spec("none") is None and parse_gate_spec("data") == 0.001 and parse_gate_spec("data:0.01") == 0.01
    assert isinstance(reward_gate("none", True), OpenGate) and isinstance(reward_gate("data", False), AudioGate)
    assert isinstance(reward_gate("data", True), CodesGate)
    for bad in ("loud", "data:0.7", "data:x", "data:0"):
        with pytest.raises(UserError):
            parse_gate_spec(bad)
    from musicgen_cfg.training.distillation import DistillConfig

    with pytest.raises(UserError, match="reward gate"):
        DistillConfig(reward_gate="silence")


def test_mask_zeroes_every_pair_of_a_degenerate_generation():
    torch.manual_seed(0)
    emb = torch.randn(2, 4, 8)
    music = torch.tensor([[True, True, True, False], [True] * 4])
    full, masked = pairwise_diversity(emb), pairwise_diversity(emb, music)
    assert masked[0, 3] == 0 and torch.equal(masked[1], full[1])
    unit = torch.nn.functional.normalize(emb[0], dim=-1)
    distance_to_3 = 1 - unit[:3] @ unit[3]
    torch.testing.assert_close(masked[0, :3], full[0, :3] - distance_to_3 / 3)
    with pytest.raises(ValueError, match="mask"):
        pairwise_diversity(emb, music[:, :3])
