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
    TensorInfo,
    atomic_directory,
    check_finite_weights,
    load_state,
    open_checkpoint,
    plan_shards,
    remove_stale_temporaries,
    safetensors_keys,
    save_tensors,
    write_sharded,
)
from musicgen_cfg.errors import UserError
from musicgen_cfg.training.run import resume_point


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


@pytest.mark.slow  # a process killed by SIGKILL mid-write
def test_a_save_killed_mid_write_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    killed_mid_write(tmp_path / "checkpoint-000002")
    assert len(hidden(tmp_path)) == 1 and hidden(tmp_path)[0].startswith(".checkpoint-000002.tmp.")
    assert not (tmp_path / "checkpoint-000002").exists()
    with atomic_directory(tmp_path / "checkpoint-000002") as tmp:
        (tmp / "done").write_text("ok")
    assert hidden(tmp_path) == [] and (tmp_path / "checkpoint-000002" / "done").read_text() == "ok"


@pytest.mark.slow  # a process killed by SIGKILL mid-write
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


@pytest.mark.slow  # a process killed by SIGKILL mid-write
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
    (lambda c: truncate(c / "model.safetensors"), "is truncated or not a safetensors file"),
    (lambda c: (c / "config.json").unlink(), "is not a model checkpoint: no config.json"),
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
    with pytest.raises(UserError, match="is truncated or not a safetensors file"):
        safetensors_keys(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("seed", range(20))
def test_plan_shards_keeps_order_and_boundaries_and_the_bound(seed):
    gen = torch.Generator().manual_seed(seed)
    groups = [[TensorInfo(f"g{g}.t{t}", None, torch.float32, (int(torch.randint(1, 40, (1,), generator=gen)),))
               for t in range(int(torch.randint(1, 6, (1,), generator=gen)))] for g in range(3)]
    bound = int(torch.randint(4, 120, (1,), generator=gen))
    shards = plan_shards(groups, bound)
    assert [i for shard in shards for i in shard] == [i for group in groups for i in group]  # order, each once
    for shard in shards:
        assert len({i.name.split(".")[0] for i in shard}) == 1  # never across a group boundary
        assert sum(i.nbytes for i in shard) <= bound or len(shard) == 1
    for before, after in zip(shards, shards[1:]):  # greedy: a shard ends only when the next tensor would not fit
        same_group = before[-1].name.split(".")[0] == after[0].name.split(".")[0]
        assert not same_group or sum(i.nbytes for i in before) + after[0].nbytes > bound


def test_sharded_weights_load_in_transformers_and_in_load_state(tiny_dir, tmp_path):
    import shutil

    from transformers import MusicgenForConditionalGeneration

    source = open_checkpoint(tiny_dir)
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_dir, sharded, ignore=shutil.ignore_patterns("model.safetensors"))
    files = write_sharded(sharded, [list(source.tensors.values())], source.read, {"format": "pt"},
                          max_shard_bytes=64 * 1024)
    assert len(files) > 1 and (sharded / "model.safetensors.index.json").is_file()
    expected = load_state(tiny_dir)
    loaded = load_state(sharded)
    assert sorted(loaded) == sorted(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert open_checkpoint(sharded).weights_sha256 == source.weights_sha256
    ours = MusicgenForConditionalGeneration.from_pretrained(sharded).state_dict()
    reference = MusicgenForConditionalGeneration.from_pretrained(tiny_dir).state_dict()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    (sharded / files[1]).write_bytes((sharded / files[1]).read_bytes()[:-3])
    with pytest.raises(UserError, match=f"{files[1]} is truncated or not a safetensors file"):
        open_checkpoint(sharded)


def test_pickle_only_directories_are_refused_by_name_everywhere(tmp_path, monkeypatch):
    from merging.merge import merge_checkpoints

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"never opened")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(UserError, match=r"^A has only pickled weights \(pytorch_model.bin\), which are never loaded"):
        merge_checkpoints([pickled, pickled], tmp_path / "out", lam=0.5)
    with pytest.raises(UserError, match="has only pickled weights"):
        open_checkpoint(pickled)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_finite_check_finds_any_nan_or_inf_and_passes_finite_sums_that_overflow(dtype):
    big = torch.full((64,), torch.finfo(dtype).max, dtype=dtype)  # finite, but its sum is inf
    check_finite_weights({"big": big, "neg": -big, "empty": torch.zeros(0, dtype=dtype)}, "ok")
    for bad in (float("nan"), float("inf"), -float("inf")):
        for base in (torch.zeros(64, dtype=dtype), big):
            tensor = base.clone()
            tensor[17] = bad
            with pytest.raises(UserError, match="x: tensor w has non-finite values"):
                check_finite_weights({"w": tensor}, "x")
    both = torch.zeros(64, dtype=dtype)
    both[1], both[2] = float("inf"), -float("inf")  # sum NaN
    with pytest.raises(UserError, match="non-finite"):
        check_finite_weights({"w": both}, "x")
