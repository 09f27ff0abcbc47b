"""The real-MusicGen training path on tiny transformers-format checkpoints: every shipped
configs/musicgen_*.yaml under CPU bf16 autocast, fp32 agreement, the bf16 teacher, gradient
accumulation / checkpointing / chunked rollouts giving the same gradient, the LR schedule, the
off-policy refusal and a diversity reward that sees the codes."""

import csv
import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from musicgen_cfg.cli import main
from musicgen_cfg.config import load_config
from musicgen_cfg.errors import UserError
from musicgen_cfg.training.distillation import DistillConfig, Distiller, split_rows

MUSICGEN_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("musicgen_*.yaml"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny real-format checkpoint with its decoder matrices x4: logits of a few nats and a
    student-to-CFG-teacher KL of ~0.1 nat per token, as in a real model (at the default init std of
    0.02 the logits are ~0, cond and uncond agree and the KL, ~1e-6 per token, is all rounding)."""
    from musicgen_cfg.tiny import tiny_musicgen

    model, tokenizer = tiny_musicgen()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(("decoder.", "enc_to_dec_proj.")) and parameter.dim() == 2:
                parameter.mul_(4.0)
    path = tmp_path_factory.mktemp("sharp") / "musicgen"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def local_files(tmp_path):
    """A random local reward embedder (instead of CLAP from the hub) and a prompts file."""
    from rl.embedders import ContrastiveMusicEmbedder

    torch.manual_seed(0)
    ContrastiveMusicEmbedder().save(tmp_path / "embedder")
    (tmp_path / "prompts.txt").write_text("sad piano\na joyful jig\ncalm organ hymn\nfast rock drums\ndark jazz bass\n")
    return tmp_path


def tiny_overrides(tiny_dir, files, config_path=None) -> list[str]:
    """A shipped config shrunk to the tiny model: 2 prompts x its G generations, 8 frames, one step."""
    overrides = ["--model", str(tiny_dir), "--prompts", str(files / "prompts.txt"), "--device", "cpu",
                 "--num-frames", "8", "--prompts-per-step", "2", "--steps", "1", "--heldout-prompts", "1",
                 "--rollout-batch-size", "5", "--tensorboard", "false", "--threads", "1", "--out", str(files / "run")]
    if config_path is None or load_config(DistillConfig, config_path).embedder.startswith("clap:"):
        overrides += ["--embedder", str(files / "embedder")]
    return overrides


def distiller(tiny_dir, files, *overrides, config_path=None) -> Distiller:
    config = load_config(DistillConfig, config_path, [*tiny_overrides(tiny_dir, files, config_path), *overrides])
    return Distiller(config, Accelerator(cpu=True))


def gradients(d: Distiller) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in d.student.lm.named_parameters()}


@pytest.mark.parametrize("config_path", MUSICGEN_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.slow  # real-format training under each shipped MusicGen config
def test_shipped_musicgen_config_trains_under_bf16(tiny_dir, local_files, config_path, capsys):
    config = load_config(DistillConfig, config_path)
    assert config.bf16 and config.teacher_dtype == "bfloat16" and config.gradient_checkpointing
    assert main(["train", "--config", str(config_path), *tiny_overrides(tiny_dir, local_files, config_path)]) == 0
    with open(local_files / "run" / "metrics.csv") as f:
        row = {k: float(v) for k, v in next(csv.DictReader(f)).items() if v}
    assert all(math.isfinite(row[k]) for k in ("kl", "heldout_kl", "grad_norm", "entropy"))
    assert row["kl"] > 0 and row["grad_norm"] > 0
    if config.beta > 0:  # a reward, and a policy-gradient term that is not zero
        assert row["reward_mean"] > 0 and abs(row["pg"]) > 0
    else:
        assert "reward_mean" not in row  # embedder none: nothing loaded for a reward nobody uses


@pytest.mark.parametrize("config_path", MUSICGEN_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.slow  # real-format training: bf16 and fp32 passes per config
def test_bf16_kl_agrees_with_fp32_on_the_same_rollouts(tiny_dir, local_files, config_path):
    """Same codes, so the KL differs by rounding only. Tolerance 3% relative: bf16 keeps 8 significant
    bits (rounding 2^-9 = 0.2% per op), the logits come out of ~10 rounded matmuls in a row (2 layers,
    the heads) and the teacher's CFG combination with gamma = 3 multiplies an error of the cond/uncond
    logits by up to 2 gamma - 1 = 5, so logits carry errors of ~1% of their size; the KL, a sum of
    p (log p_s - log p_t) over tokens, inherits about that relative error. Measured: 0.3-0.5%."""
    fp32 = distiller(tiny_dir, local_files, "--bf16", "false", "--teacher-dtype", "float32", config_path=config_path)
    bf16 = distiller(tiny_dir, local_files, config_path=config_path)
    assert bf16.teacher.lm.dtype == torch.bfloat16 and bf16.config.bf16
    codes = fp32.rollout(*rollout_args(fp32))
    for d in (fp32, bf16):
        d.rollout = lambda *args: codes  # the same rollouts for both precisions
    kl32, kl16 = fp32.accumulate_gradients(0)["kl"], bf16.accumulate_gradients(0)["kl"]
    assert kl16 != kl32  # bf16 did run
    assert kl16 == pytest.approx(kl32, rel=0.03)


def rollout_args(d: Distiller):
    from musicgen_cfg.training.distillation import rollout_seeds

    state = d.data_rng.getstate()
    prompts = [p for p in d.prompts.draw(d.config.prompts_per_step, d.data_rng) for _ in range(d.config.generations)]
    d.data_rng.setstate(state)
    return prompts, rollout_seeds(d.config.seed, 0, range(len(prompts))), False


def test_bf16_teacher_shares_the_frozen_towers(tiny_dir, local_files):
    d = distiller(tiny_dir, local_files, "--teacher-dtype", "bfloat16")
    assert d.teacher.text_encoder is d.student.text_encoder and d.teacher.codec is d.student.codec
    student = d.student.lm.state_dict()
    for name, tensor in d.teacher.lm.state_dict().items():
        assert tensor.dtype == torch.bfloat16 and not tensor.requires_grad
        assert torch.equal(tensor, student[name].to(torch.bfloat16))
    assert d.base_sha256 == d.student.weights_sha256(refresh=True)  # the fp32 base, not the bf16 copy


@pytest.mark.slow  # real-format training: three gradients
def test_micro_batches_checkpointing_and_chunked_rollouts_give_the_same_gradient(tiny_dir, local_files):
    """6 rows (2 prompts x 3): one micro-batch vs 3 of 2 rows (a prompt's siblings split between
    micro-batches), with gradient checkpointing and rollouts of 4 + 2 rows in the second."""
    common = ["--beta", "15", "--generations", "3", "--guidance-scale", "3"]
    one = distiller(tiny_dir, local_files, *common, "--grad-accum", "1", "--rollout-batch-size", "none")
    three = distiller(tiny_dir, local_files, *common, "--grad-accum", "3", "--rollout-batch-size", "4",
                      "--gradient-checkpointing", "true")
    args = rollout_args(one)
    assert torch.equal(one.rollout(*args), three.rollout(*args))
    m1, m3 = one.accumulate_gradients(0), three.accumulate_gradients(0)
    for key in ("kl", "pg", "entropy", "reward_mean"):
        assert m3[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7)
    g1, g3 = gradients(one), gradients(three)
    for name in g1:
        torch.testing.assert_close(g3[name], g1[name], rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # real-format training steps
def test_policy_gradient_is_not_degenerate_on_a_tiny_real_model(tiny_dir, local_files):
    """With random EnCodec codebooks different codes decode to different audio: the reward sees the
    codes, and beta moves the gradient."""
    common = ["--generations", "3", "--guidance-scale", "3"]
    with_reward = distiller(tiny_dir, local_files, *common, "--beta", "15")
    without = distiller(tiny_dir, local_files, *common, "--beta", "0")
    metrics = with_reward.accumulate_gradients(0)
    without.accumulate_gradients(0)
    assert abs(metrics["pg"]) > 1e-3 and metrics["reward_std"] > 1e-3
    g15, g0 = gradients(with_reward), gradients(without)
    difference = sum((g15[n] - g0[n]).norm() ** 2 for n in g0).sqrt()
    assert difference > 0.01 * sum(g.norm() ** 2 for g in g0.values()).sqrt()

    prompts, seeds, _ = rollout_args(with_reward)
    codes = with_reward.rollout(prompts, seeds, False)
    rewards, music = with_reward.diversity_rewards(codes, prompts)
    assert rewards.shape == (2, 3) and rewards.min() > 1e-3 and music.all()
    changed = codes.clone()
    changed[0] = torch.randint(0, with_reward.student.lm.vocab_size, changed[0].shape)
    assert not torch.allclose(with_reward.diversity_rewards(changed, prompts).rewards[0], rewards[0])
    clones = codes[::3].repeat_interleave(3, dim=0)  # identical siblings: nothing to reward
    assert with_reward.diversity_rewards(clones, prompts).rewards.abs().max() < 1e-4


@pytest.mark.parametrize("override, message", [
    ({"top_k": 250}, "remove top_k"),
    ({"temperature": 0.8}, "remove temperature"),
    ({"data": "teacher"}, "remove data=teacher"),
    ({"data": "mixed", "top_k": 10}, "remove top_k, data=mixed"),
    ({"grad_accum": 5}, "grad_accum 5 does not divide the 32 rows"),
    ({"teacher_dtype": "float16"}, "teacher_dtype must be one of float32, bfloat16"),
    ({"lr_floor": 1.5}, "lr_floor must be in [0, 1]"),
    ({"rollout_batch_size": 0}, "rollout_batch_size must be >= 1"),
])
def test_off_policy_and_uneven_configs_are_refused(override, message):
    overrides = [token for key, value in {"beta": 15.0, **override}.items() for token in (f"--{key}", str(value))]
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(DistillConfig, None, overrides)


def test_off_policy_sampling_is_allowed_without_the_reward():
    assert DistillConfig(beta=0.0, top_k=250, temperature=0.9, data="mixed").top_k == 250


def test_uneven_process_split_is_refused():
    config = DistillConfig(prompts_per_step=6, generations=4, grad_accum=3)  # 24 rows: fine on one process
    assert split_rows(config, 1) == (6, 8) and split_rows(config, 2) == (3, 4)
    with pytest.raises(UserError, match="not divisible by 4 processes"):
        split_rows(config, 4)
    with pytest.raises(UserError, match=r"grad_accum 3 does not divide the 8 rows .* 3 processes"):
        split_rows(config, 3)


def test_trainer_lr_decays_to_the_floor(tiny_dir, local_files):
    d = distiller(tiny_dir, local_files, "--lr", "1e-3", "--warmup", "2", "--steps", "10", "--lr-floor", "0.2")
    lrs = []
    for _ in range(10):
        lrs.append(d.scheduler.get_last_lr()[0])
        d.optimizer.step()
        d.scheduler.step()
    assert lrs[:4] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 8)))])
    assert d.scheduler.get_last_lr()[0] == pytest.approx(2e-4)
