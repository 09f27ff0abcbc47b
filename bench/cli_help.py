"""Start-up time of `musicgen-cfg --help` and `musicgen-cfg COMMAND --help` against `python -c pass`.

Run: `python bench/cli_help.py [--repeats 5]`; prints a table and writes bench/results/cli_help.json.
Goal (issue 13): every --help under 0.5 s. Each figure is the median wall time of fresh interpreters
(measured, not estimated), run interleaved with the `python -c pass` baseline on the same machine.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from musicgen_cfg.cli import COMMANDS  # noqa: E402

GOAL_S = 0.5
RESULTS = Path(__file__).parent / "results" / "cli_help.json"


def wall(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per command (median kept)")
    args = parser.parse_args()
    cases = {"python -c pass": [sys.executable, "-c", "pass"],
             "musicgen-cfg --help": [sys.executable, "-m", "musicgen_cfg.cli", "--help"]}
    cases |= {f"musicgen-cfg {name} --help": [sys.executable, "-m", "musicgen_cfg.cli", *name.split(), "--help"]
              for name in COMMANDS}
    times = {case: [] for case in cases}
    for _ in range(args.repeats):  # interleaved: machine load hits every case alike
        for case, argv in cases.items():
            times[case].append(wall(argv))
    baseline = statistics.median(times["python -c pass"])
    rows = [{"command": case, "median_s": round(statistics.median(t), 3), "minus_python_s":
             round(statistics.median(t) - baseline, 3), "goal_met": statistics.median(t) < GOAL_S} for case, t in times.items()]
    print(f"| command | median s | minus `python -c pass` | < {GOAL_S} s |\n|---|---:|---:|:---:|")
    for row in rows:
        print(f"| `{row['command']}` | {row['median_s']:.3f} | {row['minus_python_s']:.3f} | {'yes' if row['goal_met'] else 'NO'} |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"measured": True, "repeats": args.repeats, "python": platform.python_version(),
                                   "machine": platform.processor() or platform.machine(), "goal_s": GOAL_S,
                                   "load_average": os.getloadavg(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
