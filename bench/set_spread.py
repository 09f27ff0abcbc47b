"""How noisy one set of variations is: the demo's per-set diversity readouts over many seed blocks.

    .venv/bin/python bench/set_spread.py            # shipped theta_q and theta_d, the demo's first example prompt
    .venv/bin/python bench/set_spread.py --blocks 40 --variations 4 --duration 8

The demo shows, beside each set of N variations of one prompt, its reward diversity and its note-level
diversity (app/engine.py's Engine.set_measures). One set is a small sample: this measures, for each lam
(default 0 = theta_q, 0.5, 1 = theta_d), those readouts over `blocks` seed blocks (block b uses seeds b * N
... b * N + N - 1, as the demo's seed + i), and sets their spread beside the differences of neighbouring
lams' means, which is what the demo's noisy-sample note quotes. Writes bench/results/set_spread.json and
prints a table (measured on this machine; the CPU kind is recorded).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MEASURES = ("diversity", "note_diversity")


def spread(values: list[float]) -> dict:
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)), "min": float(array.min()),
            "p10": float(np.percentile(array, 10)), "median": float(np.median(array)),
            "p90": float(np.percentile(array, 90)), "max": float(array.max())}


def measure(engine, prompt: str, lam: float, blocks: int, variations: int, duration: float) -> dict[str, list[float]]:
    """Each measure's readout for `blocks` sets, through the demo's own generate path (Engine.generate)."""
    from app.requests import Request

    readouts = {name: [] for name in MEASURES}
    for block in range(blocks):
        request = Request(prompt=prompt, lam=lam, variations=variations, duration=duration, seed=block * variations,
                          temperature=1.0, top_k=engine.default_top_k, compare=False)
        summary = engine.generate(request, session="set-spread").summary
        for name in MEASURES:
            if summary[name] is None:
                raise SystemExit(f"{name} is not measured: {summary[name + '_note']}")
            readouts[name].append(summary[name])
    return readouts


def main() -> int:
    from app.cli import shipped_endpoint
    from app.engine import DEFAULT_EXAMPLES, Endpoint, Engine
    from musicgen_cfg.checkpoint import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default=DEFAULT_EXAMPLES[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--variations", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--lambdas", default="0,0.5,1", help="comma-separated lams in [0, 1], ascending")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "set_spread.json"))
    args = parser.parse_args()
    lambdas = [float(value) for value in args.lambdas.split(",")]
    if not lambdas or lambdas != sorted(lambdas) or not all(0.0 <= lam <= 1.0 for lam in lambdas):
        parser.error(f"--lambdas must be ascending values in [0, 1], got {args.lambdas!r}")
    torch.set_num_threads(args.threads)
    endpoints = {role: Endpoint(role, f"default-{role}", shipped_endpoint(role)[0]) for role in ("quality", "diversity")}
    with tempfile.TemporaryDirectory() as scratch:  # the engine's session folder: nothing is saved here
        engine = Engine.load(endpoints["quality"], endpoints["diversity"], None, "default", None, "cpu", Path(scratch),
                             [], lam=0.0, log=lambda message: None)
        began = time.perf_counter()
        readouts = {lam: measure(engine, args.prompt, lam, args.blocks, args.variations, args.duration)
                    for lam in lambdas}
        seconds = time.perf_counter() - began
    result = {
        "what": "per-set readouts of the demo (Engine.set_measures) over seed blocks, theta(lam) between the shipped "
                "theta_q (lam 0) and theta_d (lam 1)",
        "command": "python bench/set_spread.py " + " ".join(sys.argv[1:]),
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "models": {role: e.provenance.get("model_sha256") for role, e in endpoints.items()},
        "prompt": args.prompt, "blocks": args.blocks, "variations": args.variations, "duration_s": args.duration,
        "threads": args.threads, "cpu": platform.processor() or platform.machine(), "seconds": round(seconds, 1),
        "measured": "this machine",
        "lambda": {f"{lam:g}": {name: spread(values) for name, values in r.items()} for lam, r in readouts.items()},
        "difference_of_means": {f"{high:g} - {low:g}": {name: float(np.mean(readouts[high][name]) -
                                                                    np.mean(readouts[low][name])) for name in MEASURES}
                                for low, high in zip(lambdas, lambdas[1:])},
    }
    write_json(result, Path(args.out))
    print(f"{args.blocks} sets of {args.variations} x {args.duration:g} s, prompt {args.prompt!r} ({seconds:.0f} s)")
    print("| lam | measure | mean | std | min | p10 | p90 | max |\n|---|---|---|---|---|---|---|---|")
    for lam, stats in result["lambda"].items():
        for name, s in stats.items():
            print(f"| {lam} | {name} | {s['mean']:.3f} | {s['std']:.3f} | {s['min']:.3f} | {s['p10']:.3f} | "
                  f"{s['p90']:.3f} | {s['max']:.3f} |")
    for pair, differences in result["difference_of_means"].items():
        print(f"lam {pair} (means): " + ", ".join(f"{k} {v:+.3f}" for k, v in differences.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
