"""The non-finite guard (musicgen_cfg/optim.check_finite) of every training loop, and non-finite weights refused
where they are loaded (checkpoint.check_finite_weights).

Each loop is run on tiny inputs with one term of its loss turned NaN from step 2 on: the run stops with
one line naming step 2 and that term, before the update, so checkpoint 1 stays the latest.

    python -m pytest -q tests/training/test_non_finite.py
"""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from musicgen_cfg.cli import main
from musicgen_cfg.errors import UserError
from musicgen_cfg.model import load_model
from musicgen_cfg.optim import check_finite
from musicgen_cfg.run_layout import checkpoints

NAN = float("nan")


@pytest.mark.parametrize("terms, parameters_grad, message", [
    ({"KL": 1.0, "REINFORCE term": 0.5}, 1.0, None),
    ({"KL": NAN, "REINFORCE term": 0.5}, 1.0, "step 7: the KL is nan"),
    ({"reward": torch.tensor([0.1, math.inf]), "KL": NAN}, 1.0, "step 7: the reward is inf"),  # the first named
    ({"loss": torch.tensor(1.0)}, NAN, "step 7: the gradient norm is nan"),
    ({"loss": -math.inf}, 1.0, "step 7: the loss is -inf"),
])
def test_check_finite_names_the_step_and_the_first_non_finite_term(terms, parameters_grad, message):
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.full((3,), parameters_grad)
    if message is None:
        check_finite(7, terms, [weight])
    else:
        with pytest.raises(UserError, match=message + r" \(not finite\); stopped before the update"):
            check_finite(7, terms, [weight])


def nan_from_second_call(function):
    """`function` whose first output is multiplied by NaN from its second training call on."""
    calls = []

    def poisoned(*args, **kwargs):
        out = function(*args, **kwargs)
        calls.append(1)
        factor = NAN if len(calls) > 1 else 1.0
        if not isinstance(out, tuple):
            return out * factor
        parts = (out[0] * factor, *out[1:])
        return type(out)(*parts) if hasattr(out, "_fields") else parts  # a NamedTuple (SiblingRewards) stays one
    return poisoned


@pytest.fixture()
def distill_args(tiny_dir, tmp_path):
    from rl.embedders import ContrastiveMusicEmbedder

    torch.manual_seed(0)
    ContrastiveMusicEmbedder().save(tmp_path / "embedder")
    (tmp_path / "prompts.txt").write_text("sad piano\na joyful jig\ncalm organ hymn\n")
    return ["train", "--model", str(tiny_dir), "--prompts", str(tmp_path / "prompts.txt"), "--embedder",
            str(tmp_path / "embedder"), "--beta", "15", "--generations", "3", "--prompts-per-step", "1",
            "--num-frames", "8", "--guidance-scale", "3", "--steps", "3", "--checkpoint-every", "1",
            "--eval-every", "3", "--heldout-prompts", "1", "--tensorboard", "false", "--device", "cpu",
            "--threads", "1", "--out", str(tmp_path / "run")]


@pytest.mark.parametrize("term", ["KL", "reward"])
def test_distillation_stops_at_a_non_finite_term_and_keeps_the_last_good_checkpoint(term, distill_args, tmp_path,
                                                                                   monkeypatch, capsys):
    from musicgen_cfg.training import distillation

    if term == "KL":  # the per-step KL (it is called twice a step: the loss, then the KL to the base)
        loss, calls = distillation.distillation_loss, []

        def poisoned(*args, **kwargs):
            calls.append(1)
            out = loss(*args, **kwargs)
            return (out[0] * (NAN if len(calls) > 2 else 1.0), out[1])
        monkeypatch.setattr(distillation, "distillation_loss", poisoned)
    else:
        monkeypatch.setattr(distillation.Distiller, "diversity_rewards",
                            nan_from_second_call(distillation.Distiller.diversity_rewards))
    assert main(distill_args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: step 2: the {term} is nan (not finite)"), err
    run = tmp_path / "run"
    assert [p.name for p in checkpoints(run)] == ["checkpoint-000001"] and not (run / "final").exists()
    assert load_model(str(run)).lm is not None  # the latest checkpoint loads (its weights are finite)


def test_pretrain_stops_at_a_non_finite_cross_entropy(tmp_path, monkeypatch, capsys):
    from musicgen_cfg.training import pretrain

    monkeypatch.setattr(pretrain, "token_cross_entropy", nan_from_second_call(pretrain.token_cross_entropy))
    args = ["pretrain", "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "2", "--eval-segments", "2",
            "--eval-every", "3", "--checkpoint-every", "1", "--hidden-size", "32", "--num-layers", "1",
            "--num-heads", "2", "--ffn-dim", "32", "--threads", "1", "--device", "cpu"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: step 2: the cross-entropy is nan")
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["checkpoint-000001"]


def test_embedder_training_stops_at_a_non_finite_loss(monkeypatch):
    from rl import train_embedder
    from rl.embedders import ContrastiveEmbedderConfig, ContrastiveMusicEmbedder
    from rl.train_embedder_options import EmbedderTrainConfig

    torch.manual_seed(0)
    model = ContrastiveMusicEmbedder(ContrastiveEmbedderConfig(chunk_seconds=0.5, channels=(8, 16, 32), embedding_dim=32))
    mels, _ = train_embedder.clips_to_log_mels(model, [torch.randn(24000) for _ in range(12)], 16000)
    monkeypatch.setattr(train_embedder, "info_nce_loss", nan_from_second_call(train_embedder.info_nce_loss))
    config = EmbedderTrainConfig(steps=3, batch_size=4, warmup_steps=1, eval_every=3)
    with pytest.raises(UserError, match="step 2: the infonce loss is nan"):
        train_embedder.train(model, mels[:8], {"held-out": mels[8:]}, config, log=lambda message: None)


def test_scorer_training_stops_at_a_non_finite_loss(monkeypatch):
    from musicgen_cfg.world import symbolic, text_judge
    from musicgen_cfg.world.text_judge_options import ScorerTrainConfig

    torch.manual_seed(0)
    segments = torch.randint(0, symbolic.CARDINALITY, (8, symbolic.NUM_VOICES, 32))
    pairs = text_judge.Pairs(segments, [np.arange(8)] * 8, torch.zeros(8, dtype=torch.long), ["a caption"] * 8)
    sentences = torch.randn(8, text_judge.TEXT_DIM)
    monkeypatch.setattr(text_judge, "clip_loss", nan_from_second_call(text_judge.clip_loss))
    config = ScorerTrainConfig(steps=3, batch_size=4, warmup_steps=1, eval_every=3)
    with pytest.raises(UserError, match="step 2: the contrastive loss is nan"):
        text_judge.train(text_judge.ContrastiveScorer(), pairs, sentences, (segments, sentences), config,
                         log=lambda message: None)


# --- non-finite weights are refused where they are loaded -----------------------------------------

@pytest.fixture()
def nan_model(tiny_dir, tmp_path):
    import shutil

    bad = tmp_path / "nan-model"
    shutil.copytree(tiny_dir, bad)
    state = load_file(str(bad / "model.safetensors"))
    name = next(k for k in state if k.startswith("decoder.") and state[k].is_floating_point())
    state[name][0] = NAN
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    return bad


@pytest.mark.parametrize("command", ["load", "merge", "generate"])
def test_non_finite_weights_are_refused_at_load(command, nan_model, tiny_dir, tmp_path, capsys):
    if command == "load":
        with pytest.raises(UserError, match="non-finite values"):
            load_model(str(nan_model))
        return
    argv = {"merge": ["merge", "--models", str(tiny_dir), str(nan_model), "--lam", "0.5", "--out", str(tmp_path / "m")],
            "generate": ["generate", "--model", str(nan_model), "--prompt", "x", "--duration", "0.2",
                         "--out", str(tmp_path / "g")]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite values (NaN or inf)" in err[0], err
    assert not (tmp_path / "m").exists() and not (tmp_path / "g").exists()


def _poisoned(tiny_dir, directory, poison):
    """A copy of the tiny checkpoint whose floating tensors `poison(name, tensor)` rewrites in place."""
    import shutil

    shutil.copytree(tiny_dir, directory)
    state = load_file(str(directory / "model.safetensors"))
    for name, tensor in state.items():
        if tensor.is_floating_point():
            poison(name, tensor)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def ALL_NAN(name, tensor):  # noqa: N802 (a case's name)
    tensor.fill_(NAN)


def LAST_INF(name, tensor):  # noqa: N802 (one -inf, in the last head only)
    if name.endswith("lm_heads.0.weight"):
        tensor.view(-1)[-1] = -float("inf")


@pytest.mark.parametrize("poison, which, options", [
    (ALL_NAN, "second", ["--lam", "0.5"]),
    (ALL_NAN, "first", ["--lam", "0.5"]),
    (ALL_NAN, "second", ["--lam", "0"]),  # weight 0 on the NaN model: 0 * NaN is still NaN
    (ALL_NAN, "second", ["--sweep", "0,1"]),
    (ALL_NAN, "second", ["--lam", "0.5", "--method", "slerp"]),
    (ALL_NAN, "base", ["--method", "task_arithmetic", "--weights", "0.5,0.5"]),
    (LAST_INF, "second", ["--lam", "0.5"]),
])
def test_merge_refuses_a_non_finite_model_in_one_line_and_writes_nothing(poison, which, options, tiny_dir, tmp_path,
                                                                         capsys):
    bad = str(_poisoned(tiny_dir, tmp_path / "bad", poison))
    good = str(tiny_dir)
    models = {"first": [bad, good], "second": [good, bad], "base": [good, good]}[which]
    base = ["--base", bad] if which == "base" else []
    out = tmp_path / "merged"
    assert main(["merge", "--models", *models, *base, *options, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite values (NaN or inf); refusing to load it" in err[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
