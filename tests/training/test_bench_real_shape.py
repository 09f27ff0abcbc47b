"""bench/real_shape.py (the real-shape rehearsal) on its tiny preset: stages in their own processes with peak RSS next
to the formula's prediction in the JSON and the table, a stage that does not fit recorded instead of run, where the
published sizes go on 24 GB, and bad input in one line with status 2.

    python -m pytest -q tests/training/test_bench_real_shape.py
"""

import json
import subprocess
import sys

import pytest

from bench.real_shape import ROOT
from bench.real_shape_plan import SIZES, STAGES, asked_size, checkpoints_needed, placement, predicted
from bench.train_memory import GB


def rehearse(tmp_path, *args, timeout=600):
    out = tmp_path / "results" / "real_shape.json"
    done = subprocess.run([sys.executable, "bench/real_shape.py", "--preset", "tiny", "--threads", "1",
                           "--workdir", str(tmp_path / "work"), "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return done, out


@pytest.mark.slow  # a bench process per stage (each imports torch)
def test_the_tiny_preset_measures_each_stage_in_its_own_process_next_to_its_prediction(tmp_path):
    done, out = rehearse(tmp_path, "--stages", "export", "merge", "app")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["preset"] == "tiny" and report["versions"]["torch"] and report["machine"]["cores"] >= 1
    rows = report["rows"]
    assert [(r["stage"], r["preset"], r["status"]) for r in rows] == [
        ("build", "tiny", "ok"), ("export", "tiny", "ok"), ("merge", "tiny", "ok"), ("app", "tiny", "ok")]
    assert rows[0]["prerequisite_of"] == "export"  # the checkpoints were missing: built first, and recorded
    assert list(rows[0]["details"]["build_s"]) == ["quality", "diversity"]  # merge and app read both
    for row in rows:
        assert row["peak_rss_gb"] >= row["baseline_rss_gb"] > 0.1  # torch and transformers are imported
        assert row["predicted_gb"] > 0 and row["predicted"].startswith("estimated")
        assert row["measured"].startswith("measured-cpu") and row["wall_s"] > 0
    export, merge, app = rows[1:]
    assert export["details"]["sharded"] is False and export["details"]["weight_files"] == 1
    assert set(export["predicted_terms_gb"]) == {"load", "write"}
    assert merge["predicted_term"] == "stream"
    assert len(app["details"]["set_lambda_ms"]) == 2 and len(app["details"]["files"]) == 1
    assert set(app["predicted_terms_gb"]) == {"endpoints", "serve"}
    table = (tmp_path / "results" / "real_shape.md").read_text()
    for stage in ("build", "export", "merge", "app"):
        assert f"| {stage} | tiny | ok | " in table
    assert not (tmp_path / "work" / "tiny").exists()  # the checkpoints go after their last stage (no --keep)


@pytest.mark.slow  # a bench/real_shape.py process (imports torch)
def test_a_stage_that_does_not_fit_is_recorded_with_its_prediction_not_run(tmp_path):
    done, out = rehearse(tmp_path, "--stages", "generate", "--ram-gb", "0.3", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["status"] == "does not fit in 0.3 GB" and row["largest_fitting_preset"] is None
    assert row["predicted_gb"] > 0 and "peak_rss_gb" not in row
    assert not (tmp_path / "work" / "tiny").exists()  # nothing was built for it


def test_on_24_gb_a_stage_goes_to_the_largest_published_size_that_fits():
    ram, runtime = 24 * GB, 1 * GB
    for stage in STAGES:
        where = placement(stage, "large", ram, runtime)
        fitting = [size for size in SIZES
                   if all(max(predicted(s, size).values()) + runtime <= ram for s in (stage, "build"))]
        assert where == (fitting[-1] if fitting else None)
    assert placement("merge", "large", ram, runtime) == "large"  # streamed: about one shard, whatever the size
    assert placement("train_full", "large", ram, runtime) == "small"  # 16 bytes per parameter + the teacher
    for stage in ("generate", "train_lora", "export"):  # a load holds one fp32 decoder; an export copies none
        assert placement(stage, "large", ram, runtime) == "large"
    assert placement("app", "large", ram, runtime) == "small"  # serving a live lam: three fp32 decoders


def test_the_merge_is_asked_of_small_exports_and_each_size_builds_only_the_checkpoints_its_stages_read():
    assert [asked_size("merge", p) for p in ("tiny", "small", "medium", "large")] == ["tiny", "small", "small", "small"]
    assert asked_size("app", "large") == "large" and asked_size("generate", "medium") == "medium"
    plan = [("build", "large"), ("generate", "large"), ("train_full", "small"), ("export", "large"),
            ("merge", "small"), ("app", "medium")]
    assert checkpoints_needed(plan) == {"large": ("quality",), "small": ("quality", "diversity"),
                                        "medium": ("quality", "diversity")}
    assert checkpoints_needed([("build", "tiny")]) == {"tiny": ("quality", "diversity")}  # a build alone: both
    assert checkpoints_needed([("generate", None)]) == {}  # fits nowhere: nothing to build


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "error: argument --preset: invalid choice: 'huge'"),
    (["--preset", "tiny", "--stages", "generate", "fly"], "error: argument --stages: invalid choice: 'fly'"),
])
@pytest.mark.slow  # a bench/real_shape.py process per case (imports torch)
def test_bad_input_is_one_line_and_status_2(tmp_path, args, message):
    done = subprocess.run([sys.executable, "bench/real_shape.py", *args, "--out", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(message)
    assert not (tmp_path / "r.json").exists()
