"""Decode speed of the symbolic codec per timbre, in multiples of real time, on one CPU thread.

Run: `python bench/codec.py [--repeats 3]`; prints a table and writes bench/results/codec.json.
Goal: every timbre decodes at least 50x faster than real time.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from musicgen_cfg.world import synth
from musicgen_cfg.world.codec import SymbolicCodec

GOAL_X_REALTIME = 50.0
RESULTS = Path(__file__).parent / "results" / "codec.json"


def benchmark_codes() -> np.ndarray:
    """A 4-voice chorale from the corpus (bwv66.6) tiled to 512 frames: [4, 512] (~77 s at 100 bpm)."""
    from music21 import corpus

    from musicgen_cfg.world import symbolic

    codes, _ = symbolic.score_to_codes(corpus.parse("bach/bwv66.6"))
    return np.tile(codes, (1, 4))[:, :512]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per timbre (best is kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    codec = SymbolicCodec()
    codes = benchmark_codes()[None]
    rows = []
    for instrument in synth.TIMBRES:
        prompt = f"{instrument}, 100 bpm"
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            audio = codec.decode(codes, [prompt])
            best = min(best, time.perf_counter() - start)
        seconds = audio.shape[1] / codec.sample_rate
        rows.append({"instrument": instrument, "audio_seconds": round(seconds, 2),
                     "decode_seconds": round(best, 4), "x_realtime": round(seconds / best, 1)})
    print(f"{'instrument':<12} {'audio s':>8} {'decode s':>9} {'x real time':>12}")
    for row in rows:
        print(f"{row['instrument']:<12} {row['audio_seconds']:>8} {row['decode_seconds']:>9} {row['x_realtime']:>12}")
    slowest = min(row["x_realtime"] for row in rows)
    print(f"slowest: {slowest}x real time (goal >= {GOAL_X_REALTIME}x): {'ok' if slowest >= GOAL_X_REALTIME else 'MISSED'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": 1, "machine": platform.processor() or platform.machine(),
                                   "goal_x_realtime": GOAL_X_REALTIME, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
