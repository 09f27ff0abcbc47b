"""One boundary for write errors: whatever the output place does wrong (a file, under a file, a name too long,
'', a full disk, a read-only file system), every command answers `error: cannot write OUT: <reason>` or
refuses OUT before any work, on one line with exit 2, and leaves no temporary behind; a file given as
--out / --export is never replaced by a directory.

    python -m pytest -q tests/core/test_write_errors.py
"""

import errno
import pathlib

import pytest

from musicgen_cfg import checkpoint
from musicgen_cfg.cli import main
from musicgen_cfg.errors import UserError


def out_places(tmp_path):
    """name -> (output path, what the one line must say)."""
    (tmp_path / "a-file").write_text("keep me")
    return {
        "a file": (tmp_path / "a-file", "exists and is not a directory"),
        "under a file": (tmp_path / "a-file" / "sub", "a-file"),
        "name too long": (tmp_path / ("x" * 300), "File name too long"),
        "empty": ("", "''"),
    }


def command(name: str, tiny_dir, out) -> list[str]:
    return {
        "merge": ["merge", "--models", str(tiny_dir), str(tiny_dir), "--lam", "0.5", "--out", str(out)],
        "generate": ["generate", "--model", str(tiny_dir), "--prompt", "x", "--duration", "0.2", "--out", str(out)],
        "train": ["train", "--model", str(tiny_dir), "--out", str(out), "--steps", "1"],
        "train --export": ["train", "--model", str(tiny_dir), "--out", str(out) + "-run", "--export", str(out),
                           "--steps", "1"],
        "pretrain": ["pretrain", "--out", str(out), "--steps", "1"],
        "demo": ["demo", "--out", str(out), "--no-browser"],
    }[name]


@pytest.mark.parametrize("name, place", [
    (name, place) for name in ["merge", "generate", "train", "train --export", "pretrain", "demo"]
    for place in ["a file", "under a file", "name too long", "empty"]
    if (name, place) != ("demo", "empty")])  # the demo's --out '' is its documented default: a new temp folder
def test_a_bad_output_place_is_one_line_and_leaves_nothing(name, place, tiny_dir, tmp_path, capsys, monkeypatch):
    out, message = out_places(tmp_path)[place]
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(command(name, tiny_dir, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary, no partial output
    assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "No space left on device"),
                                          (errno.EROFS, "Read-only file system")])
def test_a_failing_write_inside_atomic_directory_is_cannot_write_and_leaves_no_temporary(code, reason, tiny_dir,
                                                                                       tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(code, reason)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    out = tmp_path / "merged"
    assert main(command("merge", tiny_dir, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write {out}: {reason}"]
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone


def test_atomic_directory_never_replaces_a_file(tmp_path):
    target = tmp_path / "f"
    target.write_text("keep me")
    with pytest.raises(UserError, match="exists and is not a directory"):
        with checkpoint.atomic_directory(target):
            pytest.fail("nothing is written")
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "No space left on device"), (errno.EROFS, "Read-only file system"),
                                          (errno.ENOTDIR, "Not a directory")])
def test_a_plain_write_error_reaching_the_cli_is_one_line(code, reason, tmp_path, capsys, monkeypatch):
    """Writes outside atomic_directory (a manifest line, metrics.csv, run.json) meet the CLI's one boundary."""
    from musicgen_cfg.experiments import generate

    def failing(args):
        raise OSError(code, reason, str(tmp_path / "manifest.jsonl"))

    monkeypatch.setattr(generate, "main", failing)
    assert main(["generate", "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: cannot write {tmp_path / 'manifest.jsonl'}: {reason}"]


def test_write_json_is_atomic_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    checkpoint.write_json({"b": 1, "a": [2]}, path)
    assert path.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'  # sorted, indented: the format files keep
    write_text = pathlib.Path.write_text

    def disk_full_halfway(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full_halfway)
    with pytest.raises(OSError, match="No space"):
        checkpoint.write_json({"a": [3], "b": 4}, path)
    monkeypatch.undo()
    assert checkpoint.read_json(path) == {"a": [2], "b": 1}  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
