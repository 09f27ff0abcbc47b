"""`musicgen-cfg evaluate`: metric definitions, manifest checks, one-line errors, evaluation of tiny runs in both
worlds (real MusicGen with a tiny CLAP; default world with stand-in judges), and the hypervolume.
tests/experiments/test_reproduce.py runs the reproduce pipeline.

    .venv/bin/python -m pytest -q tests/experiments/test_evaluate.py
"""

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_cfg.cli import main
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.bootstrap import bootstrap_ci
from musicgen_cfg.experiments.evaluate import Evaluator, forward_passes, mean_pairwise_distance, vendi_score
from musicgen_cfg.experiments.evaluate_options import EvaluateConfig
from musicgen_cfg.experiments.evaluate_runs import check_entry
from musicgen_cfg.experiments.pareto import front_quality_at, hypervolume, pareto_front

PROMPTS = ["sad piano", "a joyful jig with drums"]


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def tiny_run(tiny_dir, tmp_path_factory):
    """A real-MusicGen run from the tiny model, through the generate CLI: 2 prompts x 3 samples, gamma 3."""
    out = tmp_path_factory.mktemp("runs") / "tiny_g3"
    args = ["generate", "--model", str(tiny_dir), "--num-samples", "3", "--duration", "0.2", "--guidance-scale", "3",
            "--out", str(out)]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    assert main(args) == 0
    return out


def evaluate_cli(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    return code, capsys.readouterr()


class FakeJudges:
    """The DefaultWorldJudges API with simple, checkable numbers."""

    def score(self, codes, prompts):
        assert codes.ndim == 3 and len(codes) == len(prompts)
        return {"quality": (codes >= 2).mean(axis=(1, 2)), "key_accuracy": np.ones(len(codes))}

    def distribution_distance(self, codes, prompts):
        return float(codes.mean())

    def embed_codes(self, codes):
        histograms = np.stack([np.bincount(c.ravel(), minlength=64)[:64] for c in codes]).astype(np.float64)
        return histograms / np.linalg.norm(histograms, axis=1, keepdims=True)


def write_default_world_run(directory, model_dir, rate_of=lambda i: 16000):
    """A default-world run made by hand from test-split segments rendered by the symbolic codec.

    2 prompts x 2 samples; sample (p, j) holds 16 frames of segment 2p + j. Returns the codes [4, 4, 16].
    """
    from musicgen_cfg.world.codec import SymbolicCodec
    from musicgen_cfg.world.corpus import load_dataset

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"musicgen_cfg": {"codec": "symbolic"}}))
    codes = load_dataset("test").codes(range(4))[:, :, :16].astype(np.int64)
    prompts = ["a calm chorale for organ", "a calm chorale for organ", "a fast jig on fiddle", "a fast jig on fiddle"]
    directory.mkdir(parents=True)
    lines = []
    for i in range(4):
        name = f"{i}.wav"
        sf.write(directory / name, SymbolicCodec().decode(codes[i : i + 1], prompts[i : i + 1])[0].numpy(), rate_of(i))
        np.save(directory / f"{name}.codes.npy", codes[i].astype(np.int16))
        lines.append(json.dumps({"file": name, "codes_file": f"{name}.codes.npy", "prompt": prompts[i],
                                 "prompt_index": i // 2, "sample_index": i % 2, "seed": i, "model": str(model_dir),
                                 "model_sha256": "0" * 64, "sampling": {"guidance_scale": 1.0, "duration": 1.0},
                                 "num_frames": 16, "sample_rate": rate_of(i), "wall_time_s": 0.5}))
    (directory / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return codes


# ------------------------------------------------------------------------------------------ metrics

def test_diversity_is_zero_for_identical_and_one_for_orthogonal_samples():
    same = np.tile(np.array([[0.3, -1.0, 2.0]]), (4, 1))
    assert mean_pairwise_distance(same) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_distance(np.eye(3)) == pytest.approx(1.0, abs=1e-6)
    assert mean_pairwise_distance(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0, abs=1e-6)


def test_vendi_score_counts_distinct_items():
    assert vendi_score(np.tile([[1.0, 2.0, 3.0]], (5, 1))) == pytest.approx(1.0, abs=1e-6)
    assert vendi_score(np.eye(4)) == pytest.approx(4.0, abs=1e-6)
    # two identical pairs, the pairs orthogonal: two distinct items
    assert vendi_score(np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])) == pytest.approx(2.0, abs=1e-6)


def test_bootstrap_ci_contains_the_mean_and_lies_in_the_data_range():
    values = np.random.default_rng(1).normal(3.0, 1.0, size=40)
    low, high = bootstrap_ci(values, resamples=2000, seed=0)
    assert values.min() < low < values.mean() < high < values.max()
    assert 0.3 < high - low < 1.0  # about 2 * 1.96 / sqrt(40) = 0.62 wide
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_forward_passes_double_with_cfg():
    assert forward_passes(10, 4, 1.0) == 13
    assert forward_passes(10, 4, 3.0) == 26


def test_hypervolume_of_known_fronts():
    assert hypervolume([(2.0, 1.0), (1.0, 2.0)], (0.0, 0.0)) == pytest.approx(3.0)
    assert hypervolume([(2.0, 1.0), (1.0, 2.0), (0.5, 0.5)], (0.0, 0.0)) == pytest.approx(3.0)  # dominated
    assert hypervolume([(2.0, 1.0), (1.0, 2.0)], (1.5, 0.0)) == pytest.approx(0.5)  # only part of one box
    assert hypervolume([(0.5, 3.0)], (1.0, 0.0)) == 0.0
    assert pareto_front([(2.0, 1.0), (1.0, 2.0), (0.5, 0.5)]) == [(1.0, 2.0), (2.0, 1.0)]
    assert front_quality_at([(2.0, 1.0), (1.0, 2.0)], 1.5) == pytest.approx(1.5)
    assert front_quality_at([(2.0, 1.0), (1.0, 2.0)], 3.0) is None


# ------------------------------------------------------------------------------------------ manifest

def test_generate_manifest_has_the_schema_evaluate_reads(tiny_run):
    entries = [json.loads(line) for line in (tiny_run / "manifest.jsonl").read_text().splitlines()]
    for entry in entries:
        check_entry(entry, "generated")
    broken = dict(entries[0])
    del broken["prompt_index"]
    with pytest.raises(UserError, match="missing field 'prompt_index'"):
        check_entry(broken, "x")
    with pytest.raises(UserError, match="'seed' has the wrong type"):
        check_entry({**entries[0], "seed": "7"}, "x")
    with pytest.raises(UserError, match="guidance_scale"):
        check_entry({**entries[0], "sampling": {}}, "x")


# ------------------------------------------------------------------------------- evaluating real runs

def test_evaluate_tiny_real_run(tiny_run, clap_dir, reward_dir, tmp_path, capsys):
    table = tmp_path / "all.csv"
    code, captured = evaluate_cli(capsys, tiny_run, "--reward-embedder", reward_dir, "--clap", clap_dir,
                                  "--bootstrap", "200", "--out", table)
    assert code == 0, captured.err
    result = json.loads((tiny_run / "metrics.json").read_text())
    assert result["world"] == "real" and result["num_prompts"] == 2 and result["samples_per_prompt"] == [3]
    assert result["components"]["heldout_embedder"]["spec"] == "encodec-emb"  # the run's own codec, offline
    assert len(result["components"]["heldout_embedder"]["sha256"]) == 64
    assert len(result["components"]["reward_embedder"]["sha256"]) == 64
    assert len(result["checkpoint"]["model_sha256"]) == 64
    metrics = result["metrics"]
    for name in ("quality", "clap_score", "diversity_reward", "diversity_heldout", "diversity_clap", "vendi_reward",
                 "vendi_heldout", "vendi_clap", "lm_passes_per_second", "seconds_per_second"):
        stats = metrics[name]
        assert stats["ci_low"] - 1e-9 <= stats["mean"] <= stats["ci_high"] + 1e-9, name
    assert -1 <= metrics["clap_score"]["mean"] <= 1 and metrics["quality"] == metrics["clap_score"]
    # (exact diversity values are checked on the default-world run below)
    assert 0 <= metrics["diversity_reward"]["mean"] <= 2 and 1 - 1e-6 <= metrics["vendi_heldout"]["mean"] <= 3
    assert result["components"]["reward_gate"]["class"] == "AudioGate" and metrics["degenerate_rate"]["mean"] == 0
    assert "note_diversity" not in metrics  # note-level measures read symbolic codes: default world only
    # tiny EnCodec: 50 frames/s, 4 codebooks; 0.2 s = 10 frames -> 13 steps, x2 for CFG, per 0.2 s of audio
    assert metrics["lm_passes_per_second"]["mean"] == pytest.approx(26 / 0.2, rel=1e-6)
    rows = list(csv.DictReader(table.open()))
    assert {r["metric"] for r in rows} >= {"quality", "diversity_heldout"} and rows[0]["run"] == str(tiny_run)
    assert (tiny_run / "metrics.csv").is_file()

    # unchanged run + settings: read back, not recomputed; new settings recompute
    (tiny_run / "metrics.json").write_text(json.dumps({**result, "evaluated": "cached"}))
    evaluate_cli(capsys, tiny_run, "--reward-embedder", reward_dir, "--clap", clap_dir, "--bootstrap", "200")
    assert json.loads((tiny_run / "metrics.json").read_text())["evaluated"] == "cached"
    evaluate_cli(capsys, tiny_run, "--reward-embedder", reward_dir, "--clap", clap_dir, "--bootstrap", "300")
    assert json.loads((tiny_run / "metrics.json").read_text())["evaluated"] != "cached"


def test_evaluate_default_world_uses_the_judges(tmp_path, reward_dir):
    run = tmp_path / "run"
    codes = write_default_world_run(run, tmp_path / "model")
    config = EvaluateConfig(reward_embedder=str(reward_dir), heldout_embedder="judges", bootstrap=100)
    result = Evaluator(config, judges=FakeJudges()).evaluate(run)
    assert result["world"] == "default" and result["components"]["heldout_embedder"]["spec"] == "judges"
    per_prompt_quality = (codes >= 2).mean(axis=(1, 2)).reshape(2, 2).mean(axis=1)
    assert result["per_prompt"]["quality"] == pytest.approx(per_prompt_quality.tolist())
    assert result["metrics"]["key_accuracy"]["mean"] == 1.0
    histograms = FakeJudges().embed_codes(codes)
    expected = [mean_pairwise_distance(histograms[2 * p: 2 * p + 2]) for p in range(2)]
    assert result["per_prompt"]["diversity_heldout"] == pytest.approx(expected, abs=1e-6)
    assert result["metrics"]["distribution_distance"] == {"mean": pytest.approx(codes.mean()), "ci_low": None,
                                                          "ci_high": None, "num_prompts": 2}
    assert result["metrics"]["seconds_per_second"]["mean"] > 0


def test_evaluate_default_world_reports_degenerate_clips_and_note_level_diversity(tmp_path, reward_dir):
    from musicgen_cfg.world.codec import SymbolicCodec
    from rl.note_diversity import group_note_diversity

    run = tmp_path / "run"
    codes = write_default_world_run(run, tmp_path / "model")
    codes[3] = 0  # the second prompt's second sample falls silent
    np.save(run / "3.wav.codes.npy", codes[3].astype(np.int16))
    sf.write(run / "3.wav", SymbolicCodec().decode(codes[3:], ["a fast jig on fiddle"])[0].numpy(), 16000)
    result = Evaluator(EvaluateConfig(reward_embedder=str(reward_dir), bootstrap=10), judges=FakeJudges()).evaluate(run)
    assert result["components"]["heldout_embedder"]["spec"] == "spectral"  # the default world's held-out default
    per_prompt = result["per_prompt"]
    assert per_prompt["degenerate_rate"] == [0.0, 0.5] and per_prompt["silent_rate"] == [0.0, 0.5]
    assert per_prompt["silent_window_fraction"][1] >= 0.5
    # With one of two samples degenerate, the prompt has no diversity under any measure.
    for name in ("diversity_reward", "diversity_heldout", "note_diversity", "note_distance_rhythm"):
        assert per_prompt[name][1] == 0.0 and per_prompt[name][0] > 0
    assert per_prompt["vendi_reward"][1] == pytest.approx(1.0)
    expected = group_note_diversity(codes[:2])
    assert {name: per_prompt[name][0] for name in expected} == pytest.approx(expected)
    assert result["components"]["reward_gate"]["class"] == "CodesGate"
    ungated = Evaluator(EvaluateConfig(reward_embedder=str(reward_dir), bootstrap=10, reward_gate="none"),
                        judges=FakeJudges()).evaluate(run)
    assert ungated["per_prompt"]["degenerate_rate"] == [0.0, 0.0] and ungated["per_prompt"]["diversity_reward"][1] > 0


@pytest.mark.slow  # the default world's judges (MiniLM text encoder)
def test_evaluate_default_world_with_the_real_judges(tmp_path, reward_dir, capsys):
    pytest.importorskip("musicgen_cfg.world.judges")
    from musicgen_cfg.world.text_judge import ContrastiveScorer

    torch.manual_seed(0)
    ContrastiveScorer().save(tmp_path / "scorer", {})  # random weights: the shipped scorer may not exist yet
    run = tmp_path / "run"
    write_default_world_run(run, tmp_path / "model")
    code, captured = evaluate_cli(capsys, run, "--reward-embedder", reward_dir, "--judges-scorer", tmp_path / "scorer",
                                  "--heldout-embedder", "judges", "--bootstrap", "50")
    assert code == 0, captured.err
    result = json.loads((run / "metrics.json").read_text())
    assert len(result["components"]["heldout_embedder"]["scorer_sha256"]) == 64
    metrics = result["metrics"]
    assert 0 <= metrics["quality"]["mean"] <= 1 and metrics["quality"]["num_prompts"] == 2
    assert metrics["key_accuracy"] == {"mean": None, "ci_low": None, "ci_high": None, "num_prompts": 0}  # no key asked
    assert 0 <= metrics["diversity_heldout"]["mean"] <= 2 and metrics["distribution_distance"]["mean"] >= 0
    rows = {r["metric"]: r for r in csv.DictReader((run / "metrics.csv").open())}
    assert rows["key_accuracy"]["mean"] == "" and rows["quality"]["num_prompts"] == "2"


# ------------------------------------------------------------------------------------------ bad input

def _one_line_error(capsys, *args):
    code, captured = evaluate_cli(capsys, *args)
    assert code == 2 and captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1
    return captured.err


def test_bad_runs_give_one_clear_line(tmp_path, tiny_run, reward_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no manifest.jsonl" in _one_line_error(capsys, empty, "--reward-embedder", reward_dir)
    assert "not found" in _one_line_error(capsys, tmp_path / "nowhere")

    missing = tmp_path / "missing"
    shutil.copytree(tiny_run, missing)
    lost = json.loads((missing / "manifest.jsonl").read_text().splitlines()[1])["file"]
    (missing / lost).unlink()
    assert f"lists {lost}, which is missing" in _one_line_error(capsys, missing, "--reward-embedder", reward_dir)

    mixed = tmp_path / "mixed"
    write_default_world_run(mixed, tmp_path / "model", rate_of=lambda i: 16000 if i < 3 else 8000)
    assert "mixes sample rates: 16000 Hz (0.wav) and 8000 Hz (3.wav)" in _one_line_error(capsys, mixed)

    malformed = tmp_path / "malformed"
    shutil.copytree(tiny_run, malformed)
    lines = (malformed / "manifest.jsonl").read_text().splitlines()
    entry = json.loads(lines[0])
    del entry["codes_file"]
    (malformed / "manifest.jsonl").write_text("\n".join([json.dumps(entry), *lines[1:]]) + "\n")
    assert "manifest.jsonl:1: malformed entry, missing field 'codes_file'" in _one_line_error(capsys, malformed)
    (malformed / "manifest.jsonl").write_text("{not json\n")
    assert "not valid JSON" in _one_line_error(capsys, malformed)


def test_bad_settings_give_one_clear_line(tiny_run, reward_dir, capsys):
    for command in ("evaluate", "reproduce"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    assert "is not a directory" in _one_line_error(capsys, tiny_run, "--reference-dir", tiny_run / "nowhere")
    assert "FAD and KAD need at least 2" in _one_line_error(capsys, tiny_run, "--reference-dir", reward_dir)
    assert "must differ" in _one_line_error(capsys, tiny_run, "--reward-embedder", reward_dir,
                                            "--heldout-embedder", reward_dir)
    assert "default-world runs only" in _one_line_error(capsys, tiny_run, "--reward-embedder", reward_dir,
                                                        "--heldout-embedder", "judges")


def _save_codes(run, array):
    np.save(run / "0.wav.codes.npy", array)


@pytest.mark.parametrize("corrupt, message", [
    (lambda run: _save_codes(run, np.zeros((8, 16), np.int16)), "has 8 codebooks; this run's model has 4"),
    (lambda run: _save_codes(run, np.zeros((4, 0), np.int16)), "has 4 codebooks x 0 frames: no codes"),
    (lambda run: _save_codes(run, np.zeros((0, 16), np.int16)), "has 0 codebooks x 16 frames: no codes"),
    (lambda run: _save_codes(run, np.full((4, 16), 2.5, np.float32)), "holds float32 values, expected integer codes"),
    (lambda run: _save_codes(run, np.full((4, 16), 10**4, np.int16)), "holds codes outside [0, "),
    (lambda run: _save_codes(run, np.full((4, 16), -1, np.int16)), "holds codes outside [0, "),
    (lambda run: _save_codes(run, np.zeros((1, 4, 16), np.int16)), "has shape [1, 4, 16], expected [codebooks, frames]"),
    (lambda run: (run / "0.wav.codes.npy").write_bytes(b"not an array"), "cannot read codes file"),
    (lambda run: (run / "0.wav.codes.npy").write_bytes(b""), "cannot read codes file"),
])
def test_malformed_codes_files_are_one_line(corrupt, message, tmp_path, reward_dir):
    """Codes files are foreign input: each defect is refused where evaluate reads them (evaluate_runs._read_codes)."""
    run = tmp_path / "run"
    write_default_world_run(run, tmp_path / "model")
    corrupt(run)
    config = EvaluateConfig(reward_embedder=str(reward_dir), heldout_embedder="judges", bootstrap=10)
    with pytest.raises(UserError) as error:
        Evaluator(config, judges=FakeJudges()).evaluate(run)
    assert message in str(error.value) and len(str(error.value).splitlines()) == 1
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("cached, refused", [
    (lambda path: path.write_text("[]"), None),
    (lambda path: path.write_text('"a string"'), None),
    (lambda path: path.write_bytes("caf\xe9".encode("latin-1")), None),
    (lambda path: path.write_text("[" * 100_000), None),
    (lambda path: path.mkdir(), "metrics.json is not a file"),
    (lambda path: (path.parent / "metrics.csv").mkdir(), "metrics.csv is not a file"),
])
def test_a_cached_metrics_file_that_is_not_an_object_is_recomputed_and_a_folder_refused(cached, refused, tmp_path,
                                                                                        reward_dir):
    run = tmp_path / "run"
    write_default_world_run(run, tmp_path / "model")
    cached(run / "metrics.json")
    evaluator = Evaluator(EvaluateConfig(reward_embedder=str(reward_dir), heldout_embedder="judges", bootstrap=10),
                          judges=FakeJudges())
    if refused is None:
        result = evaluator.evaluate(run)
        assert json.loads((run / "metrics.json").read_text())["cache_key"] == result["cache_key"]
    else:
        with pytest.raises(UserError, match=refused):
            evaluator.evaluate(run)


@pytest.mark.parametrize("clap, message", [
    (lambda clap_dir: "/nonexistent", "--clap /nonexistent: no such directory, and not a hub id"),
    (lambda clap_dir: "./no/such/clap", "no such directory"),
    (lambda clap_dir: str(clap_dir / "config.json"), "no such directory"),
    (lambda clap_dir: str(clap_dir), "--clap scores real-MusicGen runs"),  # the default world would not use it
])
def test_a_clap_evaluate_would_not_use_is_refused(clap, message, clap_dir, tmp_path, reward_dir, capsys):
    run = tmp_path / "run"
    write_default_world_run(run, tmp_path / "model")
    assert message in _one_line_error(capsys, run, "--reward-embedder", reward_dir, "--clap", clap(clap_dir))
    assert not (run / "metrics.json").exists()
