"""Two CPU processes (gloo, via torchrun) end with the weights of one process on the same global batch:
under DDP (full and LoRA) and under FSDP2 (musicgen_cfg/training/fsdp.py, through a full-state checkpoint, a
resume and the export); with gradient accumulation over 3 micro-batches per process against 1 in the
single process, and the same held-out metrics with the held-out prompts sharded unevenly (2 + 1)."""

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    """(train args, the single-process run's directory) for the tiny model."""
    from rl.embedders import ContrastiveMusicEmbedder

    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    ContrastiveMusicEmbedder().save(root / "embedder")
    prompts = [f"{mood} {instrument}" for mood in ("sad", "joyful", "calm", "fast", "dark", "bright")
               for instrument in ("piano", "organ", "fiddle", "guitar", "drums")]
    (root / "prompts.txt").write_text("\n".join(prompts))  # 30: the last 3 are held out
    args = ["train", "--model", str(tiny_dir), "--prompts", str(root / "prompts.txt"), "--embedder",
            str(root / "embedder"), "--num-frames", "12", "--prompts-per-step", "4", "--generations", "3",
            "--beta", "15", "--guidance-scale", "3", "--lr", "1e-3", "--steps", "3", "--checkpoint-every", "3",
            "--eval-every", "3", "--heldout-prompts", "3", "--tensorboard", "false", "--threads", "1"]
    one_process(*args, "--out", str(root / "single"))
    weights = load_file(str(root / "single" / "checkpoint-000003" / "model.safetensors"))
    initial = load_file(str(tiny_dir / "model.safetensors"))
    assert any(not torch.equal(weights[k], initial[k]) for k in weights)  # the run did train
    return args, root / "single"


def one_process(*args):
    run = subprocess.run([sys.executable, "-m", "musicgen_cfg.cli", *args], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def two_processes(*args):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                          "musicgen_cfg.cli", *args], env=ENV, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]


def assert_same_run(a, b, weights="checkpoint-000003/model.safetensors"):
    """Same weights (the model's, or the adapter's) and the same last metrics (held-out ones included)."""
    wa, wb = load_file(str(a / weights)), load_file(str(b / weights))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-4)
    last = [list(csv.DictReader(open(run / "metrics.csv")))[-1] for run in (a, b)]
    for key in ("kl", "reward_mean", "music_rate", "heldout_kl", "heldout_diversity", "heldout_music_rate"):
        assert float(last[1][key]) == pytest.approx(float(last[0][key]), rel=1e-3), key


@pytest.mark.slow  # two torchrun processes (gloo) and a single-process run
def test_two_process_ddp_matches_single_process(setup, tmp_path):
    args, single = setup
    two_processes(*args, "--grad-accum", "3", "--out", str(tmp_path / "ddp"))
    assert_same_run(single, tmp_path / "ddp")


@pytest.mark.slow  # two torchrun processes (gloo) and a single-process run
def test_two_process_ddp_lora_matches_single_process(setup, tmp_path):
    """LoRA under DDP: the frozen base (shared with the teacher) is replicated, the adapters sync."""
    args = [*setup[0], "--lora.rank", "4", "--lr", "1e-2"]
    one_process(*args, "--out", str(tmp_path / "single"))
    two_processes(*args, "--grad-accum", "3", "--out", str(tmp_path / "ddp"))
    adapter = load_file(str(tmp_path / "single" / "checkpoint-000003" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in adapter.items())  # the adapters trained
    assert_same_run(tmp_path / "single", tmp_path / "ddp", "checkpoint-000003/adapter_model.safetensors")


@pytest.mark.slow  # two torchrun processes, a resume and an export
def test_two_process_fsdp_matches_single_process_through_a_resume_and_export(setup, tmp_path):
    """FSDP2 on gloo: rollouts on the gathered weights (the same codes as one process, or the weights
    would differ), a full-state checkpoint (weights + AdamW moments) that resumes under FSDP and in
    one process, a full export."""
    args, single = setup
    run = tmp_path / "fsdp"
    two_processes(*args, "--fsdp", "true", "--grad-accum", "3", "--steps", "2", "--out", str(run))
    checkpoint = run / "checkpoint-000002"
    optimizer = load_file(str(checkpoint / "optimizer.safetensors"))
    names = load_file(str(checkpoint / "model.safetensors")).keys()
    lm_names = {k for k in names if k.startswith(("decoder.", "enc_to_dec_proj."))}
    assert {k.split("::")[0] for k in optimizer if k.endswith("::exp_avg")} == lm_names  # full, not one shard
    shutil.copytree(run, tmp_path / "resumed_alone")  # the same files as a one-process run: it resumes there too
    one_process(*args, "--out", str(tmp_path / "resumed_alone"), "--resume")
    assert_same_run(single, tmp_path / "resumed_alone")
    two_processes(*args, "--fsdp", "true", "--grad-accum", "3", "--out", str(run), "--resume",
                  "--export", str(tmp_path / "export"))
    assert_same_run(single, run)
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    final = load_file(str(single / "checkpoint-000003" / "model.safetensors"))
    for name in final:
        torch.testing.assert_close(exported[name], final[name], atol=1e-5, rtol=1e-4)


def test_fsdp_refusals_are_one_line(tmp_path, capsys):
    from musicgen_cfg.cli import main

    assert main(["train", "--fsdp", "true", "--lora.rank", "4", "--out", str(tmp_path / "a")]) == 2
    assert "fsdp with lora is not supported" in capsys.readouterr().err
    assert main(["train", "--fsdp", "true", "--device", "cpu", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "this run has one" in err and len(err.strip().splitlines()) == 1


def test_a_launch_with_accelerates_own_fsdp_is_refused():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from musicgen_cfg.errors import UserError
    from musicgen_cfg.training.fsdp import configure

    with pytest.raises(UserError, match="set fsdp: true instead"):
        configure(SimpleNamespace(distributed_type=DistributedType.FSDP), None)
    configure(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU), None)  # DDP without fsdp: fine
