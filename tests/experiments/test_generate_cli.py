"""`musicgen-cfg generate` end to end on a tiny saved checkpoint: files, manifest, resume, bad input."""

import json

import pytest
import soundfile as sf

from musicgen_cfg.cli import main


def run(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr()


def test_generate_writes_playable_wavs_and_manifest_and_resumes(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["generate", "--model", str(tiny_dir), "--prompt", "sad piano", "--prompt", "a joyful jig",
            "--num-samples", "2", "--duration", "0.4", "--guidance-scale", "3", "--seed", "5", "--out", str(out)]
    code, _ = run(capsys, *args)
    assert code == 0
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["seed"] for e in entries] == [5, 6, 7, 8]
    for e in entries:
        audio, rate = sf.read(out / e["file"])
        assert rate == e["sample_rate"] and len(audio) > 0 and abs(audio).max() <= 1
        assert e["sampling"]["guidance_scale"] == 3.0 and len(e["model_sha256"]) == 64
        assert {"prompt", "seed", "beta", "lambda", "wall_time_s", "render"} <= set(e)
    run(capsys, *args)  # resume: nothing new
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4
    (out / entries[1]["file"]).unlink()  # a lost file is regenerated identically
    run(capsys, *args)
    regenerated = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert regenerated["file"] == entries[1]["file"] and (out / entries[1]["file"]).is_file()


@pytest.mark.parametrize("extra, message", [
    (["--duration", "0"], "duration"),
    (["--duration", "100000"], "too long"),
    (["--guidance-scale", "-1"], "guidance scale"),
    (["--top-k", "0"], "top-k"),
    (["--top-p", "1.5"], "top-p"),
])
def test_bad_generation_settings_give_one_line(tiny_dir, tmp_path, capsys, extra, message):
    code, captured = run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "x", "--out", str(tmp_path), *extra)
    assert code == 2 and message in captured.err and len(captured.err.strip().splitlines()) == 1


def test_bad_model_and_prompt_inputs(tmp_path, capsys):
    code, captured = run(capsys, "generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path))
    assert code == 2 and "not found" in captured.err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    code, captured = run(capsys, "generate", "--prompts-file", str(empty), "--out", str(tmp_path))
    assert code == 2 and "no prompts" in captured.err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    code, captured = run(capsys, "generate", "--model", str(broken), "--prompt", "x", "--out", str(tmp_path))
    assert code == 2 and captured.err.startswith("error:")


def test_corrupt_default_style_checkpoint(tmp_path, capsys, tiny_dir):
    import shutil

    broken = tmp_path / "truncated"
    shutil.copytree(tiny_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    code, captured = run(capsys, "generate", "--model", str(broken), "--prompt", "x", "--out", str(tmp_path / "o"))
    assert code == 2 and captured.err.startswith("error:") and len(captured.err.strip().splitlines()) == 1


def test_dtype_option_reaches_the_model_and_the_manifest(tiny_dir, tmp_path, capsys):
    out = tmp_path / "bf16"
    code, _ = run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "sad piano", "--duration", "0.2",
                  "--device", "cpu", "--dtype", "bfloat16", "--out", str(out))
    assert code == 0
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["dtype"] == "bfloat16"
    code, _ = run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "sad piano", "--duration", "0.2",
                  "--device", "cpu", "--out", str(tmp_path / "fp32"))
    assert code == 0 and json.loads((tmp_path / "fp32" / "manifest.jsonl").read_text())["dtype"] == "float32"


@pytest.mark.parametrize("dtype, message", [("float16", "--dtype float16 needs a CUDA device"),
                                            ("fp8", "unknown --dtype 'fp8'")])
def test_bad_dtype_gives_one_line(tiny_dir, tmp_path, capsys, dtype, message):
    code, captured = run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "sad piano", "--device", "cpu",
                         "--dtype", dtype, "--out", str(tmp_path / "out"))
    assert code == 2 and captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_load_model_dtype_converts_the_lm_only(tiny_dir):
    import torch

    from musicgen_cfg.model import load_model, pick_dtype

    model = load_model(str(tiny_dir), dtype=torch.bfloat16)
    assert model.lm.dtype == torch.bfloat16
    assert next(model.text_encoder.encoder.parameters()).dtype == torch.float32
    assert pick_dtype("auto", "cpu") == torch.float32 and pick_dtype("bfloat16", "cpu") == torch.bfloat16
