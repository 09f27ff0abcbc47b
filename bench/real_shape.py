"""A real-shape rehearsal on the CPU (issue 22, item 1): MusicGen checkpoints at the published sizes (transformers
format, random weights, built offline from configs) through the project's real paths, one stage per child process,
each stage's peak RSS and wall time next to the memory formula's prediction.

    make real-shape                                         # = .venv/bin/python bench/real_shape.py --preset large
    .venv/bin/python bench/real_shape.py --preset tiny      # the machinery on tiny shapes (~3 min)
    .venv/bin/python bench/real_shape.py --preset small --stages generate export --ram-gb 16

Presets: tiny (train_memory's CPU-check decoder, the tiny towers of musicgen_cfg/tiny.py) and small / medium /
large (facebook/musicgen-*: train_memory.SHAPES decoders, T5-base text encoder, 32 kHz EnCodec: tiny.T5_BASE,
tiny.ENCODEC_32KHZ). A preset has up to two checkpoints, seeds 0 and 1, the quality and diversity endpoints, in
--workdir/<preset>/: only those that the stages run there read (ENDPOINTS_READ; a build of a large one takes
~1.5 min), deleted after the preset's last stage unless --keep.

Stages (STAGES, in this order; each builds the checkpoints it reads first when they are missing). A stage runs at
the preset, except where STAGE_SIZE caps it (the merge: of two small exports, at --preset medium or large):
  build       tiny.save_tiny_musicgen of the endpoints (EnCodec codebooks randomised: transformers zeroes them)
  generate    model.load_model + MusicGen.generate: 2 s at the checkpoint's CFG (gamma 3: cond + null rows), top-k 250
  train_full  one Distiller.train_step, configs/SHAPE_CONFIGS[preset] (bf16 autocast, gradient checkpointing, bf16
              teacher), P = 2 x G = 3, 50 frames, grad_accum 2; a random contrastive embedder stands in for CLAP
  train_lora  the same with configs/musicgen_large_lora.yaml (rank-16 LoRA on a bf16 base)
  export      export.export_model of the loaded quality endpoint; records whether it is sharded
  merge       merging.merge.merge_checkpoints of the two endpoints at lam 0.5 (streamed)
  app         app.engine.Engine.load (both endpoints, LiveMerge), LiveMerge.set_lambda timed, then one request
              (1 variation, 2 s, lam 0.5)


Measured in each stage's child: peak RSS (getrusage ru_maxrss), RSS after its imports, wall time of the stage's work.
The memory formula, where a stage runs and which checkpoints a size needs: bench/real_shape_plan.py.
Writes bench/results/real_shape.json and real_shape.md (--out), rewritten atomically after every stage; children's
logs go to --workdir/logs. Bad input (unknown preset or stage): one line, exit status 2.
"""

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here

from bench.gpu_check import Stage, run_stage  # noqa: E402
from bench.real_shape_plan import (  # noqa: E402
    DURATION_S,
    ENDPOINTS,
    PRESETS,
    STAGES,
    TRAIN_CONFIGS,
    TRAIN_OVERRIDES,
    asked_size,
    checkpoint_sizes,
    checkpoints_needed,
    placement,
    predicted,
    train_config,
)
from bench.train_memory import GB  # noqa: E402

PROMPT = "a calm jazz song with piano and bass"
TOP_K = 250
LAMBDAS = (0.5, 0.2, 0.8)  # set_lambda's timed moves
OUT = ROOT / "bench" / "results" / "real_shape.json"
CHILD = "import sys; from bench.real_shape import child; child(*sys.argv[1:])"


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage block would bury it: bad input is one line, status 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


# ------------------------------------------------------------------------------------------------ stages

def preset_dir(workdir: Path, preset: str) -> Path:
    return workdir / preset


def missing(workdir: Path, preset: str, names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(name for name in names if not (preset_dir(workdir, preset) / name / "config.json").is_file())


def stage_build(root: Path, preset: str, names: list[str]) -> dict:
    from musicgen_cfg.checkpoint import atomic_directory
    from musicgen_cfg.tiny import save_tiny_musicgen

    seconds = {}
    for name in names:
        began = time.perf_counter()
        with atomic_directory(root / name) as tmp:  # a killed build leaves no checkpoint that looks whole
            save_tiny_musicgen(tmp, seed=ENDPOINTS.index(name), **checkpoint_sizes(preset))
        seconds[name] = round(time.perf_counter() - began, 1)
    size = sum(f.stat().st_size for f in (root / names[0]).iterdir()) / GB
    return {"build_s": seconds, "checkpoint_gb": size,
            "note": f"{' + '.join(names)}: {len(names)} checkpoint{'s' * (len(names) > 1)} of {size:.2f} GB in "
                    f"{' + '.join(f'{s:g}' for s in seconds.values())} s"}


def stage_generate(root: Path, preset: str) -> dict:
    from musicgen_cfg.model import load_model
    from musicgen_cfg.sampler import SamplingConfig

    began = time.perf_counter()
    model = load_model(str(root / "quality"))
    loaded = time.perf_counter()
    gamma = model.default_guidance_scale
    (out,) = model.generate([PROMPT], [0], DURATION_S, SamplingConfig(guidance_scale=gamma, top_k=TOP_K))
    done = time.perf_counter()
    return {"load_s": loaded - began, "generate_s": done - loaded, "frames": out.codes.shape[-1],
            "audio_s": len(out.audio) / out.sample_rate, "guidance_scale": gamma,
            "note": f"load {loaded - began:.1f} s; {len(out.audio) / out.sample_rate:g} s of audio (CFG {gamma:g}) "
                    f"in {done - loaded:.1f} s"}


def stage_train(root: Path, preset: str, stage: str) -> dict:
    from bench.train_memory import distiller_on
    from musicgen_cfg.training.student_export import STEP_TIMES

    name = train_config(stage, preset)
    (root / stage).mkdir(exist_ok=True)
    began = time.perf_counter()
    distiller = distiller_on(str(root / "quality"), name, root / stage, "cpu", TRAIN_OVERRIDES)
    loaded = time.perf_counter()
    metrics = distiller.train_step(0)
    step = sum(metrics[k] for k in STEP_TIMES)
    config = distiller.config
    return {"config": name, "load_s": loaded - began, "step_s": step, **{k: metrics[k] for k in STEP_TIMES},
            "prompts_per_step": config.prompts_per_step, "generations": config.generations,
            "num_frames": config.num_frames, "lora": config.lora is not None,
            "note": f"{name}: step {step:.1f} s (" + ", ".join(f"{k[5:]} {metrics[k] / step:.0%}" for k in STEP_TIMES)
                    + f"), load {loaded - began:.1f} s"}


def weight_files(directory: Path) -> dict:
    """How a model directory holds its weights: sharded or not, the files and their size."""
    from musicgen_cfg.checkpoint import WEIGHTS_INDEX_NAME

    files = sorted(directory.glob("*.safetensors"))
    sharded = (directory / WEIGHTS_INDEX_NAME).is_file()
    size = sum(f.stat().st_size for f in files) / GB
    return {"sharded": sharded, "weight_files": len(files), "weights_gb": size,
            "what": f"sharded: {'yes' if sharded else 'no'} ({len(files)} file{'s' * (len(files) > 1)}, {size:.2f} GB)"}


def stage_export(root: Path, preset: str) -> dict:
    from musicgen_cfg.export import export_model
    from musicgen_cfg.model import load_model

    began = time.perf_counter()
    model = load_model(str(root / "quality"))
    loaded = time.perf_counter()
    out = export_model(model, root / "export", {"beta": 0.0, "teacher_guidance_scale": model.default_guidance_scale,
                                                "base_model": str(root / "quality")},
                       manifest={"artifact": "bench/real_shape.py rehearsal export"})
    done = time.perf_counter()
    files = weight_files(out)
    shutil.rmtree(out)  # disk: nothing reads it
    return {"load_s": loaded - began, "export_s": done - loaded, **files,
            "note": f"{files['what']} in {done - loaded:.1f} s; load {loaded - began:.1f} s"}


def stage_merge(root: Path, preset: str) -> dict:
    from merging.merge import merge_checkpoints

    began = time.perf_counter()
    out = merge_checkpoints([root / name for name in ENDPOINTS], root / "merged", lam=0.5, overwrite=True)
    done = time.perf_counter()
    files = weight_files(out)
    shutil.rmtree(out)
    return {"merge_s": done - began, **files,
            "note": f"two {preset} checkpoints; output {files['what']} in {done - began:.1f} s"}


def load_engine(root: Path):
    """app.engine.Engine over the two endpoints, as `musicgen-cfg app --quality Q --diversity D` loads them."""
    from app.engine import Endpoint, Engine

    quality, diversity = (str(root / name) for name in ENDPOINTS)
    return Engine.load(Endpoint("quality", quality, quality), Endpoint("diversity", diversity, diversity), None, None,
                       "no reward embedder in the rehearsal", "cpu", root / "app", [], lam=LAMBDAS[0],
                       log=lambda message: None)


def stage_app(root: Path, preset: str) -> dict:
    from app.requests import parse_request

    began = time.perf_counter()
    engine = load_engine(root)
    loaded = time.perf_counter()
    times = [engine.set_lambda(lam) for lam in LAMBDAS[1:]]  # ms of LiveMerge.set_lambda, under the engine's lock
    moved = time.perf_counter()
    request = parse_request(engine.limits, PROMPT, LAMBDAS[0], 1, DURATION_S, 0, 1.0, engine.default_top_k, False)
    result = engine.generate(request, "real-shape")  # back to lam 0.5: one more set_lambda inside the request
    done = time.perf_counter()
    return {"load_s": loaded - began, "set_lambda_ms": times, "request_s": done - moved,
            "files": [i.audio.name for i in result.items],
            "note": f"Engine.load {loaded - began:.1f} s; set_lambda {' / '.join(f'{t:.0f}' for t in times)} ms; "
                    f"one request ({DURATION_S:g} s, lam {LAMBDAS[0]:g}) in {done - moved:.1f} s"}


STAGE_WORK = {"build": stage_build, "generate": stage_generate, "export": stage_export, "merge": stage_merge,
              "app": stage_app, "probe": lambda root, preset: {"note": "imports"},
              **{stage: functools.partial(stage_train, stage=stage) for stage in TRAIN_CONFIGS}}


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def child(stage: str, preset: str, workdir: str, result: str, threads: str, names: str = "") -> None:
    """A stage in this (child) process: every module any stage needs is imported first, so the RSS after the imports
    is the same for all; the result JSON holds that RSS, the peak RSS, the wall time of the work and its details.
    `names`: the endpoints a build writes (comma-separated)."""
    import peft  # noqa: F401 - imported by train_lora's LoRA; here so that every stage has the same baseline
    import torch

    import app.engine  # noqa: F401
    import merging.merge  # noqa: F401
    import musicgen_cfg.export  # noqa: F401
    import musicgen_cfg.training.distillation  # noqa: F401

    torch.set_num_threads(int(threads))
    baseline = rss_bytes()
    began = time.perf_counter()
    work, root = STAGE_WORK[stage], preset_dir(Path(workdir), preset)
    details = work(root, preset, names.split(",")) if stage == "build" else work(root, preset)
    wall = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    Path(result).write_text(json.dumps({"baseline_rss": baseline, "peak_rss": peak, "wall_s": wall,
                                        "details": details}))


# ---------------------------------------------------------------------------------------------- the run

def measured_where() -> str:
    from bench.sampler_report import device_name

    return f"measured-cpu: {device_name('cpu')}, {os.cpu_count()} cores; child process (ru_maxrss)"


def run(stage: str, preset: str, workdir: Path, threads: int, timeout_s: int, names: tuple[str, ...] = ()) -> dict:
    """Run a stage (or 'probe') in a child process; its row (measured figures, or the failure and its log's tail).
    `names`: the endpoints a build writes."""
    result = workdir / "results" / f"{stage}-{preset}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    argv = ("-c", CHILD, stage, preset, str(workdir), str(result), str(threads), ",".join(names))
    record = run_stage(Stage(f"{stage}-{preset}", argv, timeout_s, str(result)), workdir / "logs")
    row = {"stage": stage, "preset": preset, "status": record["status"], "process_s": record["seconds"],
           "log": record["log"]}
    if record["status"] != "ok" or not result.is_file():
        return {**row, "log_tail": record["log_tail"][-1500:]}
    child_result = json.loads(result.read_text())
    peak, baseline = child_result["peak_rss"], child_result["baseline_rss"]
    return {**row, "peak_rss_gb": peak / GB, "baseline_rss_gb": baseline / GB, "growth_gb": (peak - baseline) / GB,
            "wall_s": child_result["wall_s"], "details": child_result["details"], "measured": measured_where()}


def with_prediction(row: dict, stage: str, preset: str) -> dict:
    terms = predicted(stage, preset)
    peak = max(terms.values())
    row.update({"predicted_gb": peak / GB, "predicted_terms_gb": {k: v / GB for k, v in terms.items()},
                "predicted_term": max(terms, key=terms.get), "predicted": "estimated: bench/real_shape.py's formula"})
    if "growth_gb" in row:
        row["growth_over_predicted"] = row["growth_gb"] / row["predicted_gb"]
    return row


def table(report: dict) -> str:
    """The markdown table of a report's rows."""
    lines = [f"Preset {report['preset']}, --ram-gb {report['ram_gb']:g} (runtime allowance "
             f"{report['runtime_gb']:.2f} GB), {report['machine']['cpu']}, load average "
             f"{report['machine']['load_average_at_start'][0]:.1f} at the start, {report['threads']} thread(s), torch {report['versions']['torch']}, "
             f"transformers {report['versions']['transformers']}. Predicted: estimated; the rest: {measured_where()}.",
             "", "| stage | preset | status | predicted GB | peak RSS GB | RSS after imports GB | peak - imports GB "
             "| / predicted | wall s | notes |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]

    def cell(row, key, spec=".2f"):
        return format(row[key], spec) if key in row else ""

    for row in report["rows"]:
        note = row.get("details", {}).get("note", "")
        if "instead_of" in row:
            note = f"instead of {row['instead_of']}; {note}"
        if "largest_fitting_preset" in row:
            note = f"{row['predicted_term']} term; largest size that fits: {row['largest_fitting_preset'] or 'none'}"
        lines.append(f"| {row['stage']} | {row['preset']} | {row['status']} | {cell(row, 'predicted_gb')} "
                     f"| {cell(row, 'peak_rss_gb')} | {cell(row, 'baseline_rss_gb')} | {cell(row, 'growth_gb')} "
                     f"| {cell(row, 'growth_over_predicted')} | {cell(row, 'wall_s', '.1f')} | {note} |")
    return "\n".join(lines) + "\n"


def machine_ram_gb() -> float:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:")) / GB


def main() -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="default: all, in order")
    parser.add_argument("--ram-gb", type=float, default=None, help="the memory a stage must fit in (default: this "
                                                                   "machine's RAM)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each stage")
    parser.add_argument("--stage-timeout", type=int, default=900, help="seconds; a stage past it is killed")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "real_shape")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (default: deleted after use)")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON; the table goes beside it (.md)")
    args = parser.parse_args()
    import torch
    import transformers

    from bench.sampler_report import device_name
    from musicgen_cfg.checkpoint import atomic_write_text

    began = time.perf_counter()
    ram_gb = args.ram_gb if args.ram_gb is not None else round(machine_ram_gb(), 1)
    stages = [s for s in STAGES if s in args.stages]
    report = {"benchmark": "real-shape rehearsal (bench/real_shape.py, issue 22 item 1)", "preset": args.preset,
              "stages": stages, "ram_gb": ram_gb, "created": time.strftime("%Y-%m-%d %H:%M"),
              "machine": {"cpu": device_name("cpu"), "cores": os.cpu_count(), "ram_gb": machine_ram_gb(),
                          "load_average_at_start": os.getloadavg()},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
              "threads": args.threads, "rows": []}

    def save():
        report["seconds"] = round(time.perf_counter() - began, 1)
        report["machine"]["load_average_at_end"] = os.getloadavg()  # other jobs' share of the cores
        atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
        atomic_write_text(args.out.with_suffix(".md"), table(report))

    probe = run("probe", args.preset, args.workdir, args.threads, args.stage_timeout)
    if probe["status"] != "ok":
        print(f"error: the probe child failed ({probe['log']}):\n{probe['log_tail']}", file=sys.stderr)
        sys.exit(1)
    runtime = rss_bytes() + probe["peak_rss_gb"] * GB
    report.update({"runtime_gb": runtime / GB, "runtime": "this process's RSS + a child's peak RSS after the imports",
                   "probe": probe})
    asked = {stage: asked_size(stage, args.preset) for stage in stages}
    plan = [(stage, placement(stage, asked[stage], ram_gb * GB, runtime)) for stage in stages]
    needed = checkpoints_needed(plan)
    for index, (stage, where) in enumerate(plan):
        if where != asked[stage]:
            report["rows"].append(with_prediction({"stage": stage, "preset": asked[stage],
                                                   "status": f"does not fit in {ram_gb:g} GB",
                                                   "largest_fitting_preset": where}, stage, asked[stage]))
            save()
            print(f"{stage} at {asked[stage]}: does not fit in {ram_gb:g} GB"
                  + (f"; runs at {where}" if where else ""), flush=True)
            if where is None:
                continue
        absent = missing(args.workdir, where, needed[where])
        if stage != "build" and absent:
            report["rows"].append(with_prediction({**run("build", where, args.workdir, args.threads,
                                                         args.stage_timeout, absent), "prerequisite_of": stage},
                                                  "build", where))
            save()
        row = with_prediction(run(stage, where, args.workdir, args.threads, args.stage_timeout, needed[where]),
                              stage, where)
        if where != asked[stage]:
            row["instead_of"] = asked[stage]
        report["rows"].append(row)
        save()
        print(f"{stage} at {where}: {row['status']}" + (f", peak RSS {row['peak_rss_gb']:.2f} GB (predicted "
              f"{row['predicted_gb']:.2f}), {row['wall_s']:.1f} s" if "peak_rss_gb" in row else ""), flush=True)
        later = {w for _, w in plan[index + 1:]}
        for preset in {w for _, w in plan} - later:
            if not args.keep and preset is not None and preset_dir(args.workdir, preset).is_dir():
                shutil.rmtree(preset_dir(args.workdir, preset))  # disk: a large preset's checkpoints are 27 GB
    save()
    print(table(report))
    print(f"{report['seconds']:.0f} s; wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
