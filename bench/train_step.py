"""Benchmark of one distillation step: samples/s, peak memory and the time split (rollout / reward /
teacher / student), on the default model (CPU) or musicgen-small-shaped random weights (GPU).

    .venv/bin/python bench/train_step.py                                   # default model, CPU
    python bench/train_step.py --preset small --device cuda --bf16         # GPU, G = 2 and 4

Prints a table and saves bench/results/train_step_<device>.json.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicgen_cfg.training.distillation import DistillConfig, Distiller  # noqa: E402

PHASES = ("time_rollout", "time_reward", "time_teacher", "time_student")


def small_checkpoint(workdir: Path) -> tuple[str, str, str]:
    """musicgen-small-shaped decoder (random weights) + tiny text/audio towers, a random embedder, prompts."""
    from musicgen_cfg.tiny import save_tiny_musicgen
    from rl.embedders import ContrastiveMusicEmbedder

    model = save_tiny_musicgen(workdir / "small", hidden_size=1024, num_layers=24, num_heads=16, vocab_size=2048,
                               ffn_dim=4096, text_hidden_size=768)
    ContrastiveMusicEmbedder().save(workdir / "embedder")
    (workdir / "prompts.txt").write_text("\n".join(f"a jazz song with piano number {i}" for i in range(64)))
    return str(model), str(workdir / "embedder"), str(workdir / "prompts.txt")


def run(config: DistillConfig, steps: int) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=config.device == "cpu", mixed_precision="no")  # bf16: the Distiller's autocast
    distiller = Distiller(config, accelerator)
    distiller.train_step(0)  # warm-up (allocations, CUDA graph capture of the rollout)
    if torch.cuda.is_available() and config.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rows = [distiller.train_step(s) for s in range(1, steps + 1)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in (*PHASES, "samples_per_s")}
    total = sum(mean[k] for k in PHASES)
    mean["step_s"] = total
    mean.update({f"{k}_share": mean[k] / total for k in PHASES})
    if config.device == "cuda":
        mean["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return mean


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp())
    if args.preset == "small":
        model, embedder, prompts = small_checkpoint(workdir)
        base = dict(model=model, embedder=embedder, prompts=prompts, guidance_scale=3.0, num_frames=args.frames or 500,
                    prompts_per_step=args.prompts_per_step or 8)
    else:
        base = dict(model="default", embedder="default", prompts="default", num_frames=args.frames or 128,
                    prompts_per_step=args.prompts_per_step or 4)
    results = []
    for generations in args.generations or ([2, 4] if args.device == "cuda" else [4]):
        config = DistillConfig(**base, generations=generations, beta=15.0, baseline="batch_mean" if generations < 3 else "loo",
                               out=str(workdir / "run"), device=args.device, bf16=args.bf16, threads=args.threads,
                               tensorboard=False)
        row = {"preset": args.preset, "device": args.device, "bf16": args.bf16, "generations": generations,
               "prompts_per_step": config.prompts_per_step, "num_frames": config.num_frames, **run(config, args.steps)}
        results.append(row)
        print(f"G={generations}: {row['samples_per_s']:.2f} samples/s, step {row['step_s']:.2f} s | "
              + " ".join(f"{k[5:]} {row[k + '_share']:.0%}" for k in PHASES)
              + (f" | peak {row['peak_memory_gb']:.1f} GB" if "peak_memory_gb" in row else ""), flush=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    out = Path(__file__).resolve().parent / "results" / f"train_step_{args.device}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"device_name": device_name, "torch": torch.__version__, "threads": args.threads,
                               "created": time.strftime("%Y-%m-%d %H:%M"), "results": results}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
