"""bench/gpu_check.py (`make gpu-check`) without a GPU: it refuses a machine without CUDA in one line and writes
nothing; its stages fit the 8-minute budget; a stage past its timeout is killed and recorded; the goals come out
pass / fail / not measured from hand-made stage JSONs.

    python -m pytest -q tests/training/test_bench_gpu_check.py
"""

import os
import subprocess
import sys

import pytest

from bench import gpu_check
from bench.gpu_check import NO_CUDA, ROOT, STAGES, Stage, goal_line, goals, run_stage


@pytest.mark.slow  # a bench/gpu_check.py process (imports torch)
def test_without_cuda_it_fails_in_one_line_with_status_2_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == NO_CUDA == (
        "error: gpu-check needs a CUDA GPU (torch.cuda.is_available() is False)")
    assert done.stdout == ""
    assert not out.exists()


def test_the_stages_fit_the_budget_and_run_the_issue_s_benchmarks():
    assert sum(stage.timeout_s for stage in STAGES) <= gpu_check.BUDGET_S - 15  # start-up and the goals' imports
    assert gpu_check.BUDGET_S <= 8 * 60
    commands = [" ".join(stage.argv) for stage in STAGES]
    assert commands[0].startswith("bench/sampler.py --all-gpu")
    assert {c for c in commands if "train_memory" in c} == {
        "bench/train_memory.py --device cuda --shapes small --out bench/results/train_memory_cuda_small_full.json",
        "bench/train_memory.py --device cuda --shapes medium --lora --out bench/results/train_memory_cuda_medium_lora.json",
        "bench/train_memory.py --device cuda --shapes large --lora --out bench/results/train_memory_cuda_large_lora.json"}
    assert commands[-1].startswith("bench/train_step.py --preset small --device cuda --bf16")


@pytest.mark.slow  # waits out a stage's 2 s timeout
def test_a_stage_past_its_timeout_is_killed_and_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "LOGS", tmp_path / "logs")
    out = tmp_path / "stage.json"
    slow = Stage("slow", ("-c", f"import pathlib, time; pathlib.Path({str(out)!r}).write_text('{{}}'); print('hi');"
                                "time.sleep(60)"), 2, str(out))
    record = run_stage(slow)
    assert record["status"] == "timeout" and record["seconds"] < 20
    assert record["json"] == str(out) and "hi" in record["log_tail"]
    failing = Stage("failing", ("-c", "raise SystemExit(3)"), 20, str(out))
    record = run_stage(failing)
    assert record["status"] == "failed" and record["returncode"] == 3
    os.utime(out, (0, 0))  # a JSON from an earlier run is not this stage's
    assert run_stage(failing)["json"] is None


def sampler_report(speedup: float, ms_per_step: float, throughput_ratio: float) -> dict:
    """The parts of bench/sampler.py's JSON that its `targets` reads, for an --all-gpu run."""
    return {"device": "cuda", "preset": "small", "sections": [{
        "dtype": "bfloat16",
        "summary": [{"batch": 1, "cfg": cfg, "speedup_ours_over_transformers": speedup} for cfg in (False, True)],
        "results": [{"impl": "ours", "batch": 1, "cfg": False, "ms_per_step": ms_per_step}],
        "weight_read_floor": {"floor_ms_per_step": 0.5},
        "throughput": {"best": {"ratio_off_over_on": throughput_ratio}}}]}


def memory_report(shape: str, mode: str, peak_gb: float, formula_gb: float, target_gb: float) -> dict:
    """The parts of bench/train_memory.py's --device cuda JSON that the memory goals read."""
    return {"measured": [{"shape": shape, "mode": mode, "peak_gb": peak_gb, "formula_peak_gb": formula_gb}],
            "formula": [{"shape": shape, "mode": other, "target_gb": target_gb if other == mode else None}
                        for other in ("full", "lora")]}


def test_goals_pass():
    rows = goals({"sampler": sampler_report(12.0, 1.2, 1.9),
                  "memory_small_full": memory_report("small", "full", 25.0, 23.5, 40),
                  "memory_medium_lora": memory_report("medium", "lora", 14.0, 13.8, 40),
                  "memory_large_lora": memory_report("large", "lora", 22.0, 20.9, 80)})
    assert [row["verdict"] for row in rows] == ["pass"] * 6
    speed, floor, throughput, small = rows[:4]
    assert (speed["measured"], speed["target"]) == (12.0, ">= 10x")
    assert floor["measured"] == pytest.approx(1.2 / 0.5) and floor["target"] == "<= 3x"
    assert (throughput["measured"], throughput["target"]) == (1.9, ">= 1.8x")
    assert small["ratio_to_formula"] == pytest.approx(25.0 / 23.5) and small["target"] == "<= 40 GB"
    assert goal_line(small).startswith("pass") and "measured / formula 1.06" in goal_line(small)


def test_goals_fail_and_not_measured():
    rows = goals({"sampler": sampler_report(6.0, 2.0, 1.2), "memory_small_full": None,
                  "memory_large_lora": memory_report("large", "lora", 85.0, 20.9, 80)})
    verdicts = {row["goal"]: row["verdict"] for row in rows}
    assert list(verdicts.values()) == ["fail", "fail", "fail", "not measured", "not measured", "fail"]
    assert goals({})[0] == {"goal": gpu_check.SAMPLER_GOALS["gpu_bf16_batch1_ours_over_transformers"], "target": None,
                            "measured": None, "verdict": "not measured"}
    assert goal_line(rows[3]).startswith("not measured")


def writes(path, data: dict) -> tuple[str, ...]:
    """The argv of a stage process that writes `data` as its JSON."""
    return ("-c", f"import json, pathlib; pathlib.Path({str(path)!r}).write_text(json.dumps({data!r}))")


def test_the_check_runs_its_stages_and_writes_one_json(tmp_path, monkeypatch, capsys):
    """main() with stand-in stage processes (the real ones need CUDA) and a CUDA that says it is there."""
    import json

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Stand-in GPU")
    monkeypatch.setattr(gpu_check, "LOGS", tmp_path / "logs")
    paths = {name: str(tmp_path / f"{name}.json") for name in ("sampler", "small", "train_step")}
    monkeypatch.setattr(gpu_check, "STAGES", (
        Stage("sampler", writes(paths["sampler"], sampler_report(12.0, 2.0, 1.9)), 30, paths["sampler"]),
        Stage("memory_small_full", writes(paths["small"], memory_report("small", "full", 25.0, 23.5, 40)), 30,
              paths["small"]),
        Stage("memory_medium_lora", ("-c", "raise SystemExit('out of memory')"), 30, str(tmp_path / "none.json")),
        Stage("train_step", writes(paths["train_step"], {"results": [{"samples_per_s": 3.0}]}), 30,
              paths["train_step"])))
    out = tmp_path / "gpu_check.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(out)])
    gpu_check.main()
    report = json.loads(out.read_text())
    assert report["device_name"] == "Stand-in GPU" and report["torch"] == torch.__version__
    stages = report["stages"]
    assert {name: s["status"] for name, s in stages.items()} == {
        "sampler": "ok", "memory_small_full": "ok", "memory_medium_lora": "failed", "train_step": "ok"}
    assert "out of memory" in stages["memory_medium_lora"]["log_tail"] and stages["memory_medium_lora"]["json"] is None
    assert stages["train_step"]["results"] == [{"samples_per_s": 3.0}]
    assert stages["sampler"]["results"]["gpu_bf16_batch1_ms_per_step"]["met"] is False
    assert [g["verdict"] for g in report["goals"]] == ["pass", "fail", "pass", "pass", "not measured"]
    printed = capsys.readouterr().out
    assert "memory_medium_lora: failed" in printed and "not measured  memory medium lora" in printed

    # a rerun of one stage keeps the others' records
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(out), "--stages", "train_step"])
    gpu_check.main()
    rerun = json.loads(out.read_text())
    assert rerun["stages"]["sampler"] == stages["sampler"]
    assert rerun["stages"]["train_step"]["started"] >= stages["train_step"]["started"]
    assert rerun["goals"] == report["goals"]
