"""Two CPU processes (gloo, via torchrun) end with the weights of one process on the same global batch:
under DDP (full and LoRA), and under FSDP2 (musicgen_cfg/fsdp.py) with a full-state checkpoint, resume
and export; all with 2 micro-batches per step (the no-sync paths)."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    """(train args, the single-process run's step-3 weights) for the tiny model."""
    from rl.embedders import ContrastiveMusicEmbedder

    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    ContrastiveMusicEmbedder().save(root / "embedder")
    (root / "prompts.txt").write_text("sad piano\na joyful jig\ncalm organ hymn\nfast rock drums\ndark jazz bass\n")
    args = ["train", "--model", str(tiny_dir), "--prompts", str(root / "prompts.txt"), "--embedder",
            str(root / "embedder"), "--num_frames", "12", "--prompts_per_step", "4", "--generations", "3",
            "--beta", "15", "--guidance_scale", "3", "--lr", "1e-3", "--grad_accum", "2", "--steps", "3", "--checkpoint_every", "3",
            "--eval_every", "3", "--heldout_prompts", "1", "--tensorboard", "false", "--threads", "1"]
    single = subprocess.run([sys.executable, "-m", "musicgen_cfg.cli", *args, "--out", str(root / "single")],
                            env=ENV, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    weights = load_file(str(root / "single" / "checkpoint-000003" / "model.safetensors"))
    initial = load_file(str(tiny_dir / "model.safetensors"))
    assert any(not torch.equal(weights[k], initial[k]) for k in weights)  # the run did train
    return args, weights


def two_processes(*args):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                          "musicgen_cfg.cli", *args], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


def test_two_process_ddp_matches_single_process(setup, tmp_path):
    args, single = setup
    two_processes(*args, "--out", str(tmp_path / "ddp"))
    assert_same_weights(single, load_file(str(tmp_path / "ddp" / "checkpoint-000003" / "model.safetensors")))


def test_two_process_ddp_lora_matches_single_process(setup, tmp_path):
    """LoRA under DDP: the frozen base (shared with the teacher) is replicated, the adapters sync."""
    args = [*setup[0], "--lora.rank", "4", "--lr", "1e-2"]
    single = subprocess.run([sys.executable, "-m", "musicgen_cfg.cli", *args, "--out", str(tmp_path / "single")],
                            env=ENV, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    two_processes(*args, "--out", str(tmp_path / "ddp"))
    a, b = (load_file(str(tmp_path / run / "checkpoint-000003" / "adapter_model.safetensors")) for run in ("single", "ddp"))
    assert any(k.endswith("lora_B.weight") and a[k].abs().max() > 0 for k in a)  # the adapters trained
    assert_same_weights(a, b)


def test_two_process_fsdp_matches_single_process_through_a_resume_and_export(setup, tmp_path):
    """FSDP2 on gloo: rollouts on the gathered weights (the same codes as one process, or the weights
    would differ), a full-state checkpoint (weights + AdamW moments) that resumes, a full export."""
    args, single = setup
    run = tmp_path / "fsdp"
    two_processes(*args, "--fsdp", "true", "--steps", "2", "--out", str(run))
    checkpoint = run / "checkpoint-000002"
    optimizer = load_file(str(checkpoint / "optimizer.safetensors"))
    names = load_file(str(checkpoint / "model.safetensors")).keys()
    lm_names = {k for k in names if k.startswith(("decoder.", "enc_to_dec_proj."))}
    assert {k.split("::")[0] for k in optimizer if k.endswith("::exp_avg")} == lm_names  # full, not one shard
    two_processes(*args, "--fsdp", "true", "--out", str(run), "--resume", "--export", str(tmp_path / "export"))
    assert_same_weights(single, load_file(str(run / "checkpoint-000003" / "model.safetensors")))
    assert_same_weights(single, load_file(str(tmp_path / "export" / "model.safetensors")))


def test_fsdp_refusals_are_one_line(tmp_path, capsys):
    from musicgen_cfg.cli import main

    assert main(["train", "--fsdp", "true", "--lora.rank", "4", "--out", str(tmp_path / "a")]) == 2
    assert "fsdp with lora is not supported" in capsys.readouterr().err
    assert main(["train", "--fsdp", "true", "--device", "cpu", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "this run has one" in err and len(err.strip().splitlines()) == 1
