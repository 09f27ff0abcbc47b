"""The one checkpoint layer (musicgen_cfg/checkpoint.py) and the trainer's resume checks: atomic writes,
clean-up after a kill -9, one-line errors for missing / truncated / pickled checkpoints.

    python -m pytest -q tests/test_checkpoint.py
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from musicgen_cfg.checkpoint import (
    atomic_directory,
    remove_stale_temporaries,
    safetensors_keys,
    save_tensors,
)
from musicgen_cfg.errors import UserError
from musicgen_cfg.training import resume_point


def killed_mid_write(target, rename_old: bool = False):
    """Run a process that dies by SIGKILL inside atomic_directory(target) (after the first rename with
    rename_old: the state between moving the old version aside and putting the new one in place)."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import musicgen_cfg.checkpoint as c
        target = Path({str(target)!r})
        if {rename_old}:
            real_replace = os.replace
            def replace(a, b):
                real_replace(a, b)
                if Path(b).name.startswith("." + target.name + ".old."):
                    os.kill(os.getpid(), signal.SIGKILL)
            os.replace = replace
        with c.atomic_directory(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 100)
            if not {rename_old}:
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == -signal.SIGKILL


def hidden(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_save_killed_mid_write_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    killed_mid_write(tmp_path / "checkpoint-000002")
    assert len(hidden(tmp_path)) == 1 and hidden(tmp_path)[0].startswith(".checkpoint-000002.tmp.")
    assert not (tmp_path / "checkpoint-000002").exists()
    with atomic_directory(tmp_path / "checkpoint-000002") as tmp:
        (tmp / "done").write_text("ok")
    assert hidden(tmp_path) == [] and (tmp_path / "checkpoint-000002" / "done").read_text() == "ok"


def test_killed_between_the_two_renames_the_previous_version_is_put_back(tmp_path):
    with atomic_directory(tmp_path / "final") as tmp:
        (tmp / "v").write_text("1")
    killed_mid_write(tmp_path / "final", rename_old=True)
    assert not (tmp_path / "final").exists() and len(hidden(tmp_path)) == 2  # .final.old.* and .final.tmp.*
    assert len(remove_stale_temporaries(tmp_path)) == 2
    assert hidden(tmp_path) == [] and (tmp_path / "final" / "v").read_text() == "1"


def test_live_writers_temporaries_are_left_alone(tmp_path):
    with atomic_directory(tmp_path / "x") as tmp:
        assert remove_stale_temporaries(tmp_path) == [] and tmp.is_dir()  # our own write in progress
    other_host = tmp_path / ".y.tmp.1@another-host.abc"
    other_host.mkdir()
    assert remove_stale_temporaries(tmp_path) == [] and other_host.is_dir()


def test_train_resume_point_cleans_stale_checkpoint_temporaries(tmp_path):
    killed_mid_write(tmp_path / "checkpoint-000004")
    assert resume_point(tmp_path, resume=False) is None and hidden(tmp_path) == []


def fake_run(tmp_path, damage):
    """A run directory whose latest checkpoint has one damaged file; run.json as a (would-be) earlier run left it."""
    run = tmp_path / "run"
    checkpoint = run / "checkpoint-000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    save_tensors({"w": torch.zeros(8)}, checkpoint / "model.safetensors")
    save_tensors({"rng::torch": torch.get_rng_state()}, checkpoint / "optimizer.safetensors")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 2, "scheduler": {}, "data_rng": [3, [], None]}))
    (run / "run.json").write_text('{"config": {"steps": 2}}\n')
    damage(checkpoint)
    return run


def truncate(path):
    path.write_bytes(path.read_bytes()[:-5])


@pytest.mark.parametrize("damage, message", [
    (lambda c: truncate(c / "model.safetensors"), "corrupt or truncated safetensors file"),
    (lambda c: (c / "optimizer.safetensors").unlink(), "weights file not found"),
    (lambda c: (c / "trainer_state.json").write_text("{oops"), "malformed JSON"),
    (lambda c: (c / "trainer_state.json").write_text("{}"), "lacks 'step'"),
    (lambda c: None, None),  # an intact checkpoint passes
])
def test_resume_from_a_broken_checkpoint_fails_before_writing_anything(tmp_path, capsys, damage, message):
    from musicgen_cfg.cli import main

    run = fake_run(tmp_path, damage)
    if message is None:
        assert resume_point(run, resume=True) == run / "checkpoint-000002"
        return
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code = main(["train", "--out", str(run), "--prompts", "default", "--steps", "4", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # run.json untouched


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys, command):
    from musicgen_cfg.cli import main

    code = main([command, "--out", str(tmp_path / "run"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "holds no checkpoint-* to continue from" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_header_check_catches_truncation_and_garbage(tmp_path):
    save_tensors({"a": torch.arange(10.0)}, tmp_path / "ok.safetensors")
    assert safetensors_keys(tmp_path / "ok.safetensors") == ["a"]
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="corrupt or truncated"):
        safetensors_keys(tmp_path / "bad.safetensors")
