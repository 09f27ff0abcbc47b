"""DDP: two CPU processes (gloo, via torchrun) end with the weights of one process on the same global batch,
with gradient accumulation over 3 micro-batches per process against 1 in the single process, and the same
held-out metrics with the held-out prompts sharded unevenly (2 + 1) over the two processes."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file


def test_two_process_ddp_matches_single_process(tiny_dir, tmp_path):
    from rl.embedders import ContrastiveMusicEmbedder

    torch.manual_seed(0)
    ContrastiveMusicEmbedder().save(tmp_path / "embedder")
    prompts = [f"{mood} {instrument}" for mood in ("sad", "joyful", "calm", "fast", "dark", "bright")
               for instrument in ("piano", "organ", "fiddle", "guitar", "drums")]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts))  # 30: the last 3 are held out
    args = ["train", "--model", str(tiny_dir), "--prompts", str(tmp_path / "prompts.txt"), "--embedder",
            str(tmp_path / "embedder"), "--num-frames", "12", "--prompts-per-step", "4", "--generations", "3",
            "--beta", "15", "--guidance-scale", "3", "--lr", "1e-3", "--steps", "3", "--checkpoint-every", "3",
            "--eval-every", "3", "--heldout-prompts", "3", "--tensorboard", "false", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "musicgen_cfg.cli", *args, "--out", str(tmp_path / "single")],
                            env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                          "musicgen_cfg.cli", *args, "--grad-accum", "3", "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a = load_file(str(tmp_path / "single" / "checkpoint-000003" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "checkpoint-000003" / "model.safetensors"))
    initial = load_file(str(tiny_dir / "model.safetensors"))
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # the run did train
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    last = [list(csv.DictReader(open(tmp_path / run / "metrics.csv")))[-1] for run in ("single", "ddp")]
    for key in ("kl", "reward_mean", "heldout_kl", "heldout_diversity"):
        assert float(last[1][key]) == pytest.approx(float(last[0][key]), rel=1e-3), key
