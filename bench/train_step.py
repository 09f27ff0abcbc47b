"""Benchmark of one distillation step: samples/s, peak memory and the time split (rollout / reward /
teacher / student, and the reward's parts: synthesis / spectrogram / transcriber / the rest), on the
default model (CPU; P = 5 prompts x G = 4, as configs/diversity.yaml) or musicgen-small-shaped random
weights (GPU).

    .venv/bin/python bench/train_step.py                                   # default model, CPU
    .venv/bin/python bench/train_step.py --baseline HEAD~1 --repeats 3     # + the code at a git revision, interleaved
    python bench/train_step.py --preset small --device cuda --bf16         # GPU, G = 2 and 4

The reward's parts are timed inside real steps, around the calls the reward makes (the codec's decode,
the note transcriber's spectrogram and forward); "rest" is the remainder of time_reward (onset picking,
histograms, gate, pairwise reward, advantages). --baseline runs the same steps (same seeds, so the same
rollouts) on the code of a git revision and on the working tree, alternating processes `--repeats`
times (which side goes first alternates too), so both see the same load; it reports medians over steps and their ratios.

Prints a table and saves bench/results/train_step_<device>.json.
"""

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("time_rollout", "time_reward", "time_teacher", "time_student")
REWARD_PARTS = ("time_synthesis", "time_spectrogram", "time_transcriber", "time_reward_rest")


class PartTimer:
    """Adds the seconds spent in wrapped callables to named totals (the reward's parts within real steps)."""

    def __init__(self):
        self.totals = defaultdict(float)

    def wrap(self, owner, attribute: str, name: str):
        inner = getattr(owner, attribute)

        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - began

        setattr(owner, attribute, timed)  # an instance attribute: the library's own calls go through it

    def take(self) -> dict[str, float]:
        totals, self.totals = dict(self.totals), defaultdict(float)
        return totals


def small_checkpoint(workdir: Path) -> tuple[str, str, str]:
    """musicgen-small-shaped decoder (random weights) + tiny text/audio towers, a random embedder, prompts."""
    from musicgen_cfg.tiny import save_tiny_musicgen
    from rl.embedders import ContrastiveMusicEmbedder

    model = save_tiny_musicgen(workdir / "small", hidden_size=1024, num_layers=24, num_heads=16, vocab_size=2048,
                               ffn_dim=4096, text_hidden_size=768)
    ContrastiveMusicEmbedder().save(workdir / "embedder")
    (workdir / "prompts.txt").write_text("\n".join(f"a jazz song with piano number {i}" for i in range(64)))
    return str(model), str(workdir / "embedder"), str(workdir / "prompts.txt")


def measure_steps(config, steps: int) -> list[dict]:
    """One warm-up step, then `steps` steps: per step the phases, the reward's parts and samples/s."""
    import torch
    from accelerate import Accelerator

    from musicgen_cfg.training.distillation import Distiller

    accelerator = Accelerator(cpu=config.device == "cpu", mixed_precision="no")  # bf16: the Distiller's autocast
    distiller = Distiller(config, accelerator)
    timer = PartTimer()
    timer.wrap(distiller.student.codec, "decode", "time_synthesis")
    transcriber = getattr(distiller.embedder, "transcriber", None)
    if transcriber is not None:  # the note embedder
        timer.wrap(transcriber, "spectrogram", "time_spectrogram")
        timer.wrap(transcriber, "forward", "time_transcriber")
    distiller.train_step(0)  # warm-up (allocations, CUDA graph capture of the rollout)
    timer.take()
    if torch.cuda.is_available() and config.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for step in range(1, steps + 1):
        metrics = distiller.train_step(step)
        row = {k: metrics[k] for k in (*PHASES, "samples_per_s")}
        row.update({k: 0.0 for k in REWARD_PARTS[:-1]}, **timer.take())
        row["time_reward_rest"] = row["time_reward"] - sum(row[k] for k in REWARD_PARTS[:-1])
        row["step_s"] = sum(row[k] for k in PHASES)
        if config.device == "cuda":
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9  # so far
        rows.append(row)
    return rows


def summary(rows: list[dict], average=statistics.mean) -> dict:
    """Per-step rows -> one value per field (the mean, or the median for comparisons) and each phase's share."""
    out = {k: (max if k == "peak_memory_gb" else average)([r[k] for r in rows]) for k in rows[0]}
    out.update({f"{k}_share": out[k] / out["step_s"] for k in PHASES})
    out.update({f"{k}_share_of_reward": out[k] / out["time_reward"] for k in REWARD_PARTS})
    return out


def configs(args, workdir: Path) -> list:
    from musicgen_cfg.training.distillation import DistillConfig

    if args.preset == "small":
        model, embedder, prompts = small_checkpoint(workdir)
        base = dict(model=model, embedder=embedder, prompts=prompts, guidance_scale=3.0, num_frames=args.frames or 500,
                    prompts_per_step=args.prompts_per_step or 8)
    else:
        base = dict(model="default", embedder="default", prompts="default", num_frames=args.frames or 128,
                    prompts_per_step=args.prompts_per_step or 5)
    return [DistillConfig(**base, generations=generations, beta=15.0, baseline="batch_mean" if generations < 3 else "loo",
                          out=str(workdir / "run"), device=args.device, bf16=args.bf16, threads=args.threads,
                          tensorboard=False)
            for generations in args.generations or ([2, 4] if args.device == "cuda" else [4])]


def setting(config) -> dict:
    """What a result row was measured on."""
    return {"device": config.device, "bf16": config.bf16, "generations": config.generations,
            "prompts_per_step": config.prompts_per_step, "num_frames": config.num_frames}


def describe(row: dict) -> str:
    parts = " ".join(f"{k[5:]} {row[k]:.2f} s" for k in REWARD_PARTS)
    return (f"step {row['step_s']:.2f} s, {row['samples_per_s']:.2f} samples/s | "
            + " ".join(f"{k[5:]} {row[k]:.2f} s ({row[k + '_share']:.0%})" for k in PHASES) + f" | reward: {parts}")


def archived_tree(revision: str, workdir: Path) -> Path:
    """The repository's files at `revision` (git archive), for --baseline."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision], check=True,
                             capture_output=True).stdout
    tree = workdir / f"baseline-{revision.replace('/', '_')}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def compare(args, workdir: Path) -> dict:
    """Alternate child processes on the baseline's code and the working tree's; medians over all their steps."""
    trees = {"baseline": archived_tree(args.baseline, workdir), "current": ROOT}
    rows, measured_on = {name: [] for name in trees}, None
    forwarded = [f"--{k.replace('_', '-')}={v}" for k in ("preset", "device", "steps", "threads", "frames",
                                                           "prompts_per_step") if (v := getattr(args, k)) is not None]
    forwarded += ["--generations", str((args.generations or [4])[0])] + ["--bf16"] * args.bf16
    for repeat in range(args.repeats):
        order = list(trees.items())
        for name, tree in order if repeat % 2 == 0 else order[::-1]:  # neither side always runs first
            out = workdir / f"{name}-{repeat}.json"
            subprocess.run([sys.executable, __file__, *forwarded, "--code", str(tree), "--rows-out", str(out)], check=True)
            child = json.loads(out.read_text())
            rows[name] += child["rows"]
            measured_on = child["setting"]
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {describe(summary(rows[name][-args.steps:]))}", flush=True)
    medians = {name: summary(r, statistics.median) for name, r in rows.items()}
    ratios = {k: medians["baseline"][k] / medians["current"][k] for k in (*PHASES, *REWARD_PARTS, "step_s")
              if medians["current"][k] > 0}
    return {"setting": measured_on, "baseline": args.baseline, "repeats": args.repeats, "steps_per_repeat": args.steps,
            "median_baseline": medians["baseline"], "median_current": medians["current"],
            "baseline_over_current": ratios}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["default", "small"], default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--generations", type=int, nargs="+", default=None, help="G values (default: 4 CPU, 2 4 GPU)")
    parser.add_argument("--prompts-per-step", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default=None, help="git revision whose code runs interleaved with the working tree")
    parser.add_argument("--repeats", type=int, default=3, help="--baseline: processes per side")
    parser.add_argument("--code", default=str(ROOT), help=argparse.SUPPRESS)  # child of --baseline: whose code runs
    parser.add_argument("--rows-out", default=None, help=argparse.SUPPRESS)  # child of --baseline: its per-step rows
    args = parser.parse_args()
    sys.path.insert(0, args.code)
    import torch

    import musicgen_cfg

    if not Path(musicgen_cfg.__file__).resolve().is_relative_to(Path(args.code).resolve()):
        raise SystemExit(f"musicgen_cfg comes from {musicgen_cfg.__file__}, not from {args.code}")

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp())
    if args.rows_out:
        config = configs(args, workdir)[0]
        Path(args.rows_out).write_text(json.dumps({"setting": setting(config), "rows": measure_steps(config, args.steps)}))
        return
    record = {"threads": args.threads, "created": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
              "cpu_count": os.cpu_count(), "load_average_1min_before": os.getloadavg()[0]}
    if args.baseline:
        comparison = compare(args, workdir)
        results = [{"preset": args.preset, **comparison["setting"], **comparison["median_current"]}]
        record["comparison"] = comparison
        print("baseline / current (medians): " + ", ".join(f"{k} {v:.2f}x" for k, v in
                                                           comparison["baseline_over_current"].items()))
    else:
        results = []
        for config in configs(args, workdir):
            row = {"preset": args.preset, **setting(config), **summary(measure_steps(config, args.steps))}
            results.append(row)
            print(f"G={config.generations}: {describe(row)}"
                  + (f" | peak {row['peak_memory_gb']:.1f} GB" if "peak_memory_gb" in row else ""), flush=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    out = ROOT / "bench" / "results" / f"train_step_{args.device}.json"
    out.parent.mkdir(exist_ok=True)
    record["load_average_1min_after"] = os.getloadavg()[0]  # other jobs on the machine: absolute times are theirs too
    out.write_text(json.dumps({"device_name": device_name, **record, "results": results}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
