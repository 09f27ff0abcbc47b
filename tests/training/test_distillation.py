"""CFG distillation: loss properties, a tiny training run with checkpoints and exact resume, config errors."""

import json

import pytest
import torch

from musicgen_cfg.cli import main
from musicgen_cfg.config import load_config
from musicgen_cfg.errors import UserError
from musicgen_cfg.scoring import score
from musicgen_cfg.training.distillation import DistillConfig, distillation_loss, token_divergence


@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl", "jsd"])
def test_divergence_zero_for_identical_and_positive_otherwise(kind):
    logits = torch.randn(2, 4, 5, 16)
    assert token_divergence(logits, logits.clone(), kind).abs().max() < 1e-6
    assert (token_divergence(logits, torch.randn(2, 4, 5, 16), kind) > 0).all()


def test_reverse_kl_known_value_and_extremes():
    student = torch.log(torch.tensor([0.5, 0.5, 1e-30, 1e-30]))
    teacher = torch.zeros(4)  # uniform
    assert token_divergence(student, teacher, "reverse_kl").item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    # forward KL punishes a student that misses teacher mass (mode covering); reverse KL does not blow up
    assert token_divergence(student, teacher, "forward_kl").item() > 10
    # JSD is bounded by log 2 whatever the inputs
    assert token_divergence(torch.tensor([100.0, 0, 0, 0]), torch.tensor([0, 0, 0, 100.0]), "jsd").item() <= 0.6932


def test_kl_gradient_matches_finite_differences():
    torch.manual_seed(0)
    student = torch.randn(1, 1, 1, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(1, 1, 1, 6, dtype=torch.float64)
    mask = torch.ones(1, 1, 1)

    def loss_of(x):
        log_s, log_t = torch.log_softmax(x, -1), torch.log_softmax(teacher, -1)
        return (log_s.exp() * (log_s - log_t)).sum()

    distillation_loss(student, teacher, mask)[0].backward()
    eps, numeric = 1e-6, torch.zeros(6, dtype=torch.float64)
    for i in range(6):
        bump = torch.zeros_like(student)
        bump[..., i] = eps
        numeric[i] = (loss_of(student.detach() + bump) - loss_of(student.detach() - bump)) / (2 * eps)
    # token_divergence works in float32, so compare at float32 precision
    torch.testing.assert_close(student.grad.flatten(), numeric, atol=1e-5, rtol=1e-4)


def test_kl_zero_when_student_is_teacher_at_gamma_one(tiny_model):
    codes = torch.randint(0, tiny_model.lm.vocab_size, (2, 4, 12))
    cond = tiny_model.condition(["sad piano", "a jig"])
    teacher = score(tiny_model.lm, codes, cond, guidance_scale=1.0)
    student = score(tiny_model.lm, codes, cond)
    loss, per_codebook = distillation_loss(student.logits, teacher.cfg_logits, student.mask)
    assert loss.item() == 0.0 and per_codebook.shape == (4,)


@pytest.fixture()
def train_setup(tiny_dir, tmp_path):
    from rl.embedders import ContrastiveMusicEmbedder

    torch.manual_seed(0)
    embedder_dir = tmp_path / "embedder"
    ContrastiveMusicEmbedder().save(embedder_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(["sad piano", "a joyful jig", "calm organ hymn", "fast rock drums", "dark jazz bass"]))
    return ["--model", str(tiny_dir), "--prompts", str(prompts), "--embedder", str(embedder_dir), "--num-frames", "12",
            "--prompts-per-step", "2", "--generations", "3", "--beta", "15", "--guidance-scale", "3", "--lr", "1e-3",
            "--checkpoint-every", "2", "--eval-every", "2", "--heldout-prompts", "1", "--tensorboard", "false",
            "--threads", "1"]


def weights_of(run_dir):
    from safetensors.torch import load_file

    last = sorted(run_dir.glob("checkpoint-*"))[-1]
    return load_file(str(last / "model.safetensors"))


def test_tiny_training_run_checkpoints_and_resumes_exactly(train_setup, tmp_path, capsys):
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["train", *train_setup, "--steps", "4", "--out", str(full), "--export", str(tmp_path / "export")]) == 0
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["trained_on"]["torch"] == torch.__version__ and manifest["trained_on"]["threads"] == 1
    assert manifest["step_seconds"] > 0
    rows = (full / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 5 and {"kl", "reward_mean", "music_rate", "kl_codebook3", "heldout_kl", "heldout_music_rate",
                               "time_rollout", "grad_norm"} <= set(header)
    values = dict(zip(header, rows[-1].split(",")))
    assert all(torch.isfinite(torch.tensor(float(values[k]))) for k in ("kl", "pg", "reward_mean", "entropy"))
    assert 0 <= float(values["music_rate"]) <= 1 and 0 <= float(values["heldout_music_rate"]) <= 1
    config = json.loads((sorted(full.glob("checkpoint-*"))[-1] / "config.json").read_text())
    assert config["musicgen_cfg"]["beta"] == 15.0
    # killed after step 2 (its last checkpoint), then resumed: the same weights as the uninterrupted run
    assert main(["train", *train_setup, "--steps", "2", "--out", str(split)]) == 0
    assert main(["train", *train_setup, "--steps", "4", "--out", str(split), "--resume"]) == 0
    a, b = weights_of(full), weights_of(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((split / "metrics.csv").read_text().splitlines()) == 5
    base = weights_of(full)  # and training changed the weights at all
    from musicgen_cfg.model import load_model

    initial = load_model(train_setup[1]).lm.state_dict()
    assert any(not torch.equal(initial[k], base[k]) for k in initial)


@pytest.mark.parametrize("override, message", [
    (["--bogus", "1"], "unknown config key 'bogus'"),
    (["--beta", "-1"], "beta must be >= 0"),
    (["--beta", "15", "--generations", "1"], "generations >= 2"),
    (["--model", "/nonexistent/model"], "not found"),
    (["--steps", "ten"], "cannot read 'ten'"),
    (["--beta", "15", "--top-k", "250"], "beta > 0 needs rollouts from the untruncated student"),
    (["--grad-accum", "3"], "grad_accum 3 does not divide the 32 rows"),
])
def test_bad_configs_fail_with_one_line(tmp_path, capsys, override, message):
    code = main(["train", "--out", str(tmp_path / "run"), "--prompts", "default", *override])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_config_validation_direct():
    with pytest.raises(UserError, match="loo"):
        DistillConfig(beta=1.0, generations=2)
    assert DistillConfig(beta=1.0, generations=2, baseline="batch_mean").generations == 2


def test_top_k_zero_is_off_as_everywhere():
    assert DistillConfig(top_k=0).top_k is None and DistillConfig(top_k=5).top_k == 5
    with pytest.raises(UserError, match="top_k must be >= 0"):
        load_config(DistillConfig, None, ["--top-k", "-1"])  # bounds are checked where values arrive


# --- the audit: settings whose gradient depends on the process split, or that score another policy ------

@pytest.mark.parametrize("overrides, processes, message", [
    (["--baseline", "batch_mean"], 2, "baseline batch_mean use the whole batch's rewards"),
    (["--normalize-advantages", "true"], 2, "normalize_advantages use the whole batch's rewards"),
    (["--baseline", "batch_mean", "--prompts-per-step", "1"], 1, "needs prompts_per_step >= 2 per process"),
    (["--lora.dropout", "0.1"], 1, "lora.dropout > 0 with beta > 0 is refused"),
    (["--baseline", "batch_mean", "--beta", "0", "--embedder", "none"], 2, None),  # no advantages at beta = 0
    (["--normalize-advantages", "true"], 1, None),
])
def test_settings_that_depend_on_the_process_split_or_perturb_the_scored_policy_are_refused(overrides, processes,
                                                                                           message):
    from musicgen_cfg.training.distillation import split_rows

    def build():
        config = load_config(DistillConfig, None, ["--beta", "15", "--prompts-per-step", "4", *overrides])
        return split_rows(config, processes)

    if message is None:
        assert build()
    else:
        with pytest.raises(UserError, match=message):
            build()


def test_batch_mean_with_one_prompt_per_process_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--beta", "15", "--baseline", "batch_mean", "--prompts-per-step", "1", "--out", str(out)]) == 2
    assert "needs prompts_per_step >= 2 per process" in capsys.readouterr().err and not out.exists()
