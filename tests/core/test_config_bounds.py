"""Bounds declared once, in the config field (config.field(min=, max=, gt=, lt=, choices=, finite=)), and
checked from there for the command line, YAML and overrides (config.check_bounds); --help shows them.
Foreign YAML and JSON (a config file, a checkpoint's config.json) are checked for structure before use.

    python -m pytest -q tests/core/test_config_bounds.py
"""

import json
import shutil

import pytest

from musicgen_cfg import cli
from musicgen_cfg.config import load_config
from musicgen_cfg.errors import UserError
from musicgen_cfg.model import load_model
from musicgen_cfg.training.distillation import DistillConfig


@pytest.mark.parametrize("argv, message", [
    (["train", "--lr", "inf"], "lr must be a finite number, got inf"),
    (["train", "--lr", "1e30"], "lr must be in (0, 1], got 1e+30"),
    (["train", "--lr", "0"], "lr must be in (0, 1], got 0"),
    (["train", "--beta", "nan"], "beta must be a finite number, got nan"),
    (["train", "--beta", "inf"], "beta must be a finite number, got inf"),
    (["train", "--guidance-scale", "nan"], "guidance_scale must be a finite number"),
    (["train", "--grad-clip", "nan"], "grad_clip must be a finite number, got nan"),
    (["train", "--grad-clip", "-1"], "grad_clip must be > 0, got -1"),
    (["train", "--warmup", "-5"], "warmup must be >= 0, got -5"),
    (["train", "--seed", "-1"], "seed must be in [0, 2147483647], got -1"),
    (["train", "--seed", str(2**70)], "seed must be in [0, 2147483647]"),
    (["train", "--divergence", "kl"], "divergence must be one of reverse_kl, forward_kl, jsd"),
    (["train", "--lora.dropout", "inf"], "lora.dropout must be a finite number"),
    (["pretrain", "--lr", "inf"], "lr must be a finite number, got inf"),
    (["pretrain", "--dropout", "2"], "dropout must be in [0, 1), got 2"),
    (["pretrain", "--weight-decay", "-1"], "weight_decay must be >= 0, got -1"),
    (["generate", "--prompt", "x", "--out", "o", "--num-samples", "0"], "--num-samples must be in [1, 1000], got 0"),
    (["generate", "--prompt", "x", "--out", "o", "--top-p", "nan"], "--top-p must be a finite number"),
])
def test_out_of_range_and_non_finite_options_are_one_user_error(argv, message):
    with pytest.raises(UserError) as caught:
        cli.parse(argv)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("argv, key, value", [
    (["train", "--grad-clip", "inf"], "grad_clip", float("inf")),  # declared finite=False: no clipping
    (["train", "--warmup", "0"], "warmup", 0),
    (["train", "--seed", str(2**31 - 1)], "seed", 2**31 - 1),
    (["train", "--lr", "1"], "lr", 1.0),
])
def test_values_on_the_bounds_are_accepted(argv, key, value):
    _, (config, _) = cli.parse(argv)
    assert getattr(config, key) == value


@pytest.mark.parametrize("text, message", [
    ("steps: true\n", "config key 'steps': cannot read True as int"),
    ("out: [a, b]\n", "config key 'out': cannot read ['a', 'b'] as str"),
    ("model: null\n", "config key 'model': cannot read null as str"),
    ("lr: {a: 1}\n", "config key 'lr': cannot read {'a': 1} as float"),
    ("tensorboard: 7\n", "config key 'tensorboard': cannot read 7 as bool"),
    ("lr: .inf\n", "lr must be a finite number, got inf"),
    ("steps: 1e400\n", "config key 'steps': cannot read '1e400' as int"),
    ("steps: .inf\n", "config key 'steps': cannot read inf as int"),
    ("lora:\n  rank: -2\n", "lora.rank must be >= 1, got -2"),
    ("steps: " + "[" * 100_000 + "\n", "malformed YAML"),
])
def test_yaml_values_of_the_wrong_type_or_range_are_one_user_error(text, message, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        load_config(DistillConfig, path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("content", [bytes(range(256)), "steps: 3  # caf\xe9\n".encode("latin-1")])
def test_binary_or_latin1_yaml_is_one_user_error(content, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not UTF-8 text|malformed YAML"):
        load_config(DistillConfig, path)


def test_help_shows_the_declared_bounds(capsys):
    from musicgen_cfg.config import config_help

    text = config_help(DistillConfig)
    assert "[in (0, 1]; fixed for --resume]" in next(line for line in text.splitlines() if line.strip().startswith("lr "))
    assert "[> 0, inf allowed; " in next(line for line in text.splitlines() if line.strip().startswith("grad_clip "))
    assert "[>= 1]" in next(line for line in text.splitlines() if line.strip().startswith("steps "))
    assert "one of reverse_kl, forward_kl, jsd" in text
    with pytest.raises(SystemExit):
        cli.parse(["generate", "--help"])
    assert "[in [1, 1000]]" in " ".join(capsys.readouterr().out.split())


# --- a checkpoint's config.json is foreign input ---------------------------------------------------

def _edit(config: dict, change) -> dict:
    change(config)
    return config


@pytest.mark.parametrize("write, message", [
    (lambda c: "[1, 2]", "expected an object, got list"),
    (lambda c: '"a string"', "expected an object, got str"),
    (lambda c: "[" * 100_000 + "]" * 100_000, "malformed JSON"),
    (lambda c: json.dumps(_edit(c, lambda d: d.pop("decoder"))), "has no 'decoder' mapping"),
    (lambda c: json.dumps(_edit(c, lambda d: d["decoder"].update(hidden_size=-4))), "decoder.hidden_size must be a positive int"),
    (lambda c: json.dumps(_edit(c, lambda d: d["decoder"].update(num_attention_heads=3))), "is not divisible by"),
    (lambda c: json.dumps(_edit(c, lambda d: d["musicgen_cfg"].update(guidance_scale=float("nan")))),
     "recorded guidance_scale must be a finite number >= 0, got nan"),
    (lambda c: json.dumps(_edit(c, lambda d: d.update(musicgen_cfg=[1]))), "'musicgen_cfg' must be a mapping"),
])
def test_a_malformed_checkpoint_config_is_one_user_error(write, message, tmp_path):
    from musicgen_cfg.model import ASSETS

    directory = tmp_path / "model"
    shutil.copytree(ASSETS / "base", directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(write(config))
    with pytest.raises(UserError) as caught:
        load_model(str(directory))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_latin1_checkpoint_config_is_one_user_error(tmp_path):
    from musicgen_cfg.model import ASSETS

    directory = tmp_path / "model"
    shutil.copytree(ASSETS / "base", directory)
    (directory / "config.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(UserError, match="malformed JSON"):
        load_model(str(directory))


# --- --resume keeps the run's fixed settings ------------------------------------------------------

@pytest.mark.parametrize("changed, message", [
    (["--lr", "3e-2"], "--resume: lr is 0.03 but the run"),
    (["--num-frames", "12"], "--resume: num_frames is 12"),
    (["--seed", "5"], "--resume: seed is 5"),
])
def test_resume_refuses_a_changed_fixed_setting(changed, message, tiny_dir, tmp_path, capsys):
    from musicgen_cfg.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sad piano\na joyful jig\n")
    args = ["train", "--model", str(tiny_dir), "--prompts", str(prompts), "--embedder", "none", "--num-frames", "8",
            "--prompts-per-step", "1", "--generations", "2", "--guidance-scale", "3", "--lr", "1e-3",
            "--heldout-prompts", "1", "--tensorboard", "false", "--device", "cpu", "--threads", "1",
            "--checkpoint-every", "1", "--out", str(tmp_path / "run")]
    assert main([*args, "--steps", "1"]) == 0
    assert main([*args, "--steps", "2", *changed, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: " + message), err
    assert main([*args, "--steps", "2", "--threads", "1", "--resume"]) == 0  # steps, threads: not fixed
