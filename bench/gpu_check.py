"""The prepared GPU check (issue 22, item 3): the GPU benchmarks of bench/ in at most 8 minutes on one CUDA GPU,
each stage a subprocess with its own timeout, one JSON, and the goals printed as pass / fail / not measured.

    make gpu-check                                   # = .venv/bin/python bench/gpu_check.py (after make setup)
    python3 bench/gpu_check.py                       # any Python with CUDA torch and this project's needs
    python3 bench/gpu_check.py --stages train_step   # rerun some stages; the others' records are kept

Stages, in order (STAGES; the timeouts add up to under 8 minutes):
  sampler             bench/sampler.py --all-gpu -> bench/results/sampler_cuda.json (rewritten after every
                      configuration, so a stage stopped by its timeout keeps the bf16 figures measured first)
  memory_small_full   bench/train_memory.py --device cuda --shapes small          -> train_memory_cuda_small_full.json
  memory_medium_lora  bench/train_memory.py --device cuda --shapes medium --lora  -> train_memory_cuda_medium_lora.json
  memory_large_lora   bench/train_memory.py --device cuda --shapes large --lora   -> train_memory_cuda_large_lora.json
  train_step          bench/train_step.py --preset small --device cuda --bf16 (G = 4, one timed step after the
                      warm-up) -> bench/results/train_step_cuda.json
A stage that fails or runs past its timeout (its process group is killed) is recorded as such and the next one runs.

Writes bench/results/gpu_check.json (--out): the device, torch / CUDA versions, per stage its status (ok / failed /
timeout), seconds, the path of its own JSON when it wrote one during this run, its results and its log's tail (the
whole logs: runs/gpu_check/STAGE.log), and the goals: >= 10x transformers at batch 1 in bf16, <= 3x the
weight-read floor, CFG-off throughput >= 1.8x CFG-on (bench/sampler.py's `targets`), and per memory shape the
measured peak against the formula (ratio) and against the shape's target (train_memory's `target_gb`).
Without CUDA it prints one error line and exits with status 2, writing nothing.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
LOGS = ROOT / "runs" / "gpu_check"
BUDGET_S = 480  # the whole check, on one GPU
NO_CUDA = "error: gpu-check needs a CUDA GPU (torch.cuda.is_available() is False)"


@dataclass(frozen=True)
class Stage:
    name: str
    argv: tuple[str, ...]  # after `python`, from the repository root
    timeout_s: int
    out: str  # the JSON it writes, relative to the repository root


def memory_stage(shape: str, lora: bool, timeout_s: int) -> Stage:
    mode = "lora" if lora else "full"
    out = f"bench/results/train_memory_cuda_{shape}_{mode}.json"
    return Stage(f"memory_{shape}_{mode}", ("bench/train_memory.py", "--device", "cuda", "--shapes", shape,
                                            *(["--lora"] if lora else []), "--out", out), timeout_s, out)


STAGES = (
    Stage("sampler", ("bench/sampler.py", "--all-gpu", "--out", "bench/results/sampler_cuda.json"), 200,
          "bench/results/sampler_cuda.json"),
    memory_stage("small", False, 60),
    memory_stage("medium", True, 65),
    memory_stage("large", True, 95),
    Stage("train_step", ("bench/train_step.py", "--preset", "small", "--device", "cuda", "--bf16", "--generations", "4",
                         "--steps", "1"), 45, "bench/results/train_step_cuda.json"),
)
# bench/sampler.py's targets that are goals of this check, with what each measures
SAMPLER_GOALS = {
    "gpu_bf16_batch1_ours_over_transformers": "bf16 batch 1: ours / transformers speed",
    "gpu_bf16_batch1_over_weight_read_floor": "bf16 batch 1: ours ms/step / weight-read floor",
    "gpu_bf16_throughput_cfg_off_over_on": "bf16 best throughput: CFG off / CFG on",
}


def run_stage(stage: Stage, logs: Path | None = None) -> dict:
    """Run one stage as its own process group under its timeout; its record (its JSON only if written now).
    Its output goes to `logs` (default LOGS)/<name>.log."""
    logs = logs or LOGS
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{stage.name}.log"
    started = time.time()
    with log.open("w") as handle:
        process = subprocess.Popen([sys.executable, *stage.argv], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                   env={"HF_HUB_OFFLINE": "1", **os.environ, "PYTHONUNBUFFERED": "1"},  # everything is built offline
                                   start_new_session=True)
        try:
            status = "ok" if process.wait(timeout=stage.timeout_s) == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # with its workers (Inductor's compile processes)
            process.wait()
            status = "timeout"
    out = ROOT / stage.out
    fresh = out.is_file() and out.stat().st_mtime >= started - 1  # not a JSON left by an earlier run
    return {"status": status, "returncode": process.returncode, "seconds": round(time.time() - started, 1),
            "timeout_s": stage.timeout_s, "command": "python " + " ".join(stage.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)), "json": stage.out if fresh else None,
            "log": os.path.relpath(log, ROOT), "log_tail": log.read_text(errors="replace")[-2000:]}


def stage_results(name: str, report: dict):
    """What a stage's JSON holds for the check's own JSON: the sampler's targets, the memory and train-step rows."""
    if name == "sampler":
        from bench.sampler_report import targets

        return targets(report)
    return report["measured"] if name.startswith("memory_") else report["results"]


def goals(reports: dict[str, dict | None]) -> list[dict]:
    """The goals from the stages' JSONs (`reports`: stage name -> its JSON, None or absent when it wrote none):
    [{"goal", "target", "measured", "verdict": "pass" | "fail" | "not measured", ...}]."""
    from bench.sampler_report import targets

    sampler = targets(reports["sampler"]) if reports.get("sampler") else {}
    rows = []
    for name, what in SAMPLER_GOALS.items():
        found = sampler.get(name)
        rows.append({"goal": what, "target": found and found["target"], "measured": found and found["measured"],
                     "verdict": ("pass" if found["met"] else "fail") if found else "not measured"})
    for stage in STAGES:
        if not stage.name.startswith("memory_"):
            continue
        _, shape, mode = stage.name.split("_")
        row = {"goal": f"memory {shape} {mode}: measured peak GB", "target": None, "measured": None,
               "verdict": "not measured"}
        report = reports.get(stage.name) or {}
        measured = next((r for r in report.get("measured", []) if (r["shape"], r["mode"]) == (shape, mode)), None)
        formula = next((r for r in report.get("formula", []) if (r["shape"], r["mode"]) == (shape, mode)), None)
        if measured and formula:
            target = formula["target_gb"]
            row.update({"target": f"<= {target} GB", "measured": measured["peak_gb"],
                        "formula_gb": measured["formula_peak_gb"],
                        "ratio_to_formula": measured["peak_gb"] / measured["formula_peak_gb"],
                        "verdict": "pass" if measured["peak_gb"] <= target else "fail"})
        rows.append(row)
    return rows


def goal_line(row: dict) -> str:
    if row["verdict"] == "not measured":
        return f"not measured  {row['goal']}"
    text = f"{row['verdict']:12s}  {row['goal']}: {row['measured']:.2f} (goal {row['target']})"
    if "ratio_to_formula" in row:
        text += f"; formula {row['formula_gb']:.2f} GB, measured / formula {row['ratio_to_formula']:.2f}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=[s.name for s in STAGES], default=None,
                        help="run only these (default all); the other stages keep their records from --out")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_check.json")
    args = parser.parse_args()
    import torch

    from musicgen_cfg.checkpoint import atomic_write_text

    if not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        sys.exit(2)
    earlier = json.loads(args.out.read_text()).get("stages", {}) if args.stages and args.out.is_file() else {}
    report = {"check": "make gpu-check (bench/gpu_check.py, issue 22 item 3)", "device_name": torch.cuda.get_device_name(),
              "torch": torch.__version__, "cuda": torch.version.cuda, "budget_s": BUDGET_S,
              "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "stages": dict(earlier)}
    began = time.perf_counter()

    def save():  # after every stage: a check stopped from outside keeps the stages it ran
        report["seconds"] = round(time.perf_counter() - began, 1)
        atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")

    for stage in STAGES:
        if args.stages and stage.name not in args.stages:
            continue
        print(f"[{time.perf_counter() - began:5.0f}s] {stage.name}: {' '.join(stage.argv)} (timeout {stage.timeout_s} s)",
              flush=True)
        record = run_stage(stage)
        report["stages"][stage.name] = record
        print(f"[{time.perf_counter() - began:5.0f}s] {stage.name}: {record['status']} in {record['seconds']} s"
              + (f", wrote {record['json']}" if record["json"] else ", no JSON"), flush=True)
        if record["status"] != "ok":
            print(record["log_tail"][-800:], flush=True)
        save()
    reports = {}
    for name, record in report["stages"].items():
        try:
            if record.get("json"):
                reports[name] = json.loads((ROOT / record["json"]).read_text())
                record["results"] = stage_results(name, reports[name])
        except Exception as err:  # noqa: BLE001 - a malformed stage JSON must not lose the others
            record["results_error"] = f"{type(err).__name__}: {err}"
            reports.pop(name, None)
    report["goals"] = goals(reports)
    save()
    print(f"\ngoals ({report['device_name']}, torch {report['torch']}, CUDA {report['cuda']}):")
    for row in report["goals"]:
        print("  " + goal_line(row))
    print(f"{report['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
