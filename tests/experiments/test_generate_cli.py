"""`musicgen-cfg generate` end to end on a tiny saved checkpoint: files, manifest, resume, bad input."""

import json
from pathlib import Path

import numpy as np
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
    assert [e["seed"] for e in entries] == [5, 6, 7, 8] and [e["seq"] for e in entries] == [1, 2, 3, 4]
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
    assert regenerated["seq"] == 5  # a resumed run's records sort after the earlier ones


@pytest.mark.parametrize("extra, message", [
    (["--duration", "0"], "duration"),
    (["--duration", "500"], "too long"),
    (["--guidance-scale", "-1"], "--guidance-scale"),
    (["--top-k", "-1"], "top-k"),
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


def test_top_k_zero_means_off_as_in_the_app(tiny_dir, tmp_path, capsys):
    from musicgen_cfg.sampler import SamplingConfig

    assert SamplingConfig(top_k=0) == SamplingConfig(top_k=None)
    outs = {}
    for top_k in ("0", "100000"):  # 0 = off, and a k above the vocabulary keeps every token too
        out = tmp_path / top_k
        code, _ = run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "x", "--duration", "0.3",
                      "--top-k", top_k, "--out", str(out))
        assert code == 0
        entry = json.loads((out / "manifest.jsonl").read_text())
        outs[top_k] = (np.load(out / entry["codes_file"]), entry["sampling"]["top_k"])
    assert outs["0"][1] is None and np.array_equal(outs["0"][0], outs["100000"][0])


def _write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case, message", [
    (lambda d: ["--prompt", ""], "prompt 1 is empty"),
    (lambda d: ["--prompt", "a jig", "--prompt", " \t "], "prompt 2 is empty"),
    (lambda d: ["--prompt", "x" * 2001], "at most 2000 are allowed"),
    (lambda d: ["--prompt", "x", "--num-samples", "1000000"], "--num-samples must be in [1, 1000]"),
    (lambda d: ["--prompt", "x", "--duration", "1e9"], "--duration must be in (0, 600]"),
    (lambda d: ["--prompt", "x", "--guidance-scale", "inf"], "--guidance-scale must be a finite number"),
    (lambda d: ["--prompt", "x", "--guidance-scale", "nan"], "--guidance-scale must be a finite number"),
    (lambda d: ["--prompt", "x", "--temperature", "inf"], "--temperature must be a finite number"),
    (lambda d: ["--prompt", "x", "--seed", str(2**70)], "--seed must be in [0, 2147483647]"),
    (lambda d: ["--prompt", "x", "--seed", "-1"], "--seed must be in [0, "),
    (lambda d: ["--prompt", "x", "--prompt", "y", "--seed", str(2**31 - 1)], "leaves no room for 2 items"),
    (lambda d: ["--prompt", "x", "--device", "tpu9"], "unknown device 'tpu9'"),
    (lambda d: ["--prompt", "x", "--device", "cuda:99"], "device 'cuda:99' requested but"),
    (lambda d: ["--prompts-file", _write(d / "latin1.txt", "caf\xe9 jazz\n".encode("latin-1"))], "is not UTF-8 text"),
    (lambda d: ["--prompts-file", _write(d / "binary.txt", bytes(range(256)))], "is not UTF-8 text"),
    (lambda d: ["--prompts-file", _write(d / "nul.txt", b"a jig\x00\x00\n")], "is binary"),
])
def test_bad_input_is_one_line_before_any_model_load_and_writes_nothing(tiny_dir, tmp_path, capsys, monkeypatch,
                                                                      case, message):
    import musicgen_cfg.model

    monkeypatch.setattr(musicgen_cfg.model, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    code, captured = run(capsys, "generate", "--model", str(tiny_dir), *case(tmp_path), "--out", str(out))
    assert code == 2 and captured.err.startswith("error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and not out.exists()


def test_out_that_is_a_file_or_unwritable_is_refused_before_loading(tiny_dir, tmp_path, capsys, monkeypatch):
    import musicgen_cfg.model

    monkeypatch.setattr(musicgen_cfg.model, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    existing = tmp_path / "file.wav"
    existing.write_bytes(b"keep me")
    places = [(existing, "exists and is not a directory"), (existing / "sub", "is a file")]
    if Path("/proc/self").is_dir():  # a read-only place even for root (chmod does not stop root)
        places.append((Path("/proc/musicgen-cfg-out"), "is not writable"))
    for out, message in places:
        code, captured = run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "x", "--out", str(out))
        assert code == 2 and message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert existing.read_bytes() == b"keep me"


def test_a_failure_before_the_first_item_leaves_no_manifest(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, captured = run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "x", "--duration", "500",
                         "--out", str(out))  # too long for the tiny model: found after loading
    assert code == 2 and "too long" in captured.err and not out.exists()


def test_pickle_only_transformers_directory_is_refused_without_unpickling(tiny_dir, tmp_path, capsys, monkeypatch):
    import shutil

    import torch

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_dir / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not even a pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    code, captured = run(capsys, "generate", "--model", str(pickled), "--prompt", "x", "--out", str(tmp_path / "o"))
    assert code == 2 and "only pickled weights (pytorch_model.bin)" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


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


@pytest.mark.parametrize("content, message", [
    (b"{}\n", "manifest.jsonl:1 lacks 'file'"),
    (b"[]\n", "manifest.jsonl:1 is not a JSON object"),
    (b'"a"\n5\n', "manifest.jsonl:1 is not a JSON object"),
    (b"{oops\n", "manifest.jsonl:1 is not valid JSON"),
    ("caf\xe9\n".encode("latin-1"), "manifest.jsonl is not UTF-8 text"),
])
def test_a_malformed_existing_manifest_is_one_line(content, message, tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_bytes(content)
    code, captured = run(capsys, "generate", "--model", str(tiny_dir), "--prompt", "x", "--duration", "0.2",
                         "--guidance-scale", "3", "--out", str(out))
    assert code == 2 and message in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert (out / "manifest.jsonl").read_bytes() == content  # nothing appended to a file it cannot read


def _prompts_file(directory, count: int) -> str:
    return _write(directory / f"prompts-{count}.txt", "".join(f"prompt {i}\n" for i in range(count)).encode())


@pytest.mark.parametrize("command, case, message", [
    ("generate", lambda d: ["--prompts-file", _prompts_file(d, 20_000), "--num-samples", "1000"],
     "20000 prompts x 1000 samples = 20000000 items; at most 100000 in one run"),
    ("generate", lambda d: ["--prompts-file", _prompts_file(d, 101), "--num-samples", "1000"],
     "101 prompts x 1000 samples = 101000 items"),
    ("generate", lambda d: ["--prompts-file", _prompts_file(d, 2000), "--duration", "600"],
     "2000 items x 600 s = 1.2e+06 s of audio; at most 1e+06 s in one run"),
    ("reproduce", lambda d: ["--num-prompts", "20000", "--num-samples", "1000"],
     "20000 prompts x 1000 samples = 20000000 items"),
    ("reproduce", lambda d: ["--num-prompts", "100000", "--num-samples", "2", "--duration", "8"],
     "200000 items"),
    ("reproduce", lambda d: ["--num-prompts", "1000", "--num-samples", "4", "--duration", "600"],
     "4000 items x 600 s = 2.4e+06 s of audio"),
    ("reproduce", lambda d: ["--num-samples", "1001"], "num_samples must be in [2, 1000]"),
    ("reproduce", lambda d: ["--duration", "1e9"], "duration must be in (0, 600]"),
])
def test_a_request_beyond_the_run_bounds_is_one_line_before_any_model_load(command, case, message, tiny_dir, tmp_path,
                                                                         capsys, monkeypatch):
    """Resource bounds (generate.check_request_size): a run too big to finish is refused before it costs a load."""
    import musicgen_cfg.model

    monkeypatch.setattr(musicgen_cfg.model, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    model = ["--model", str(tiny_dir)] if command == "generate" else []
    code, captured = run(capsys, command, *model, *case(tmp_path), "--out", str(out))
    assert code == 2 and captured.err.startswith("error: ") and message in captured.err, captured.err
    assert len(captured.err.strip().splitlines()) == 1 and not out.exists()
