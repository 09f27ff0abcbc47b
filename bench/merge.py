"""Benchmark of weight merging: the streaming checkpoint merge and LiveMerge's lambda change.

    .venv/bin/python bench/merge.py                  # musicgen-small decoder size (~420M fp32), CPU
    .venv/bin/python bench/merge.py --small          # 2 decoder layers: a quick run
    python bench/merge.py --device cuda --skip-stream  # LiveMerge on a GPU (target <= 20 ms on an H100)

(a) Two synthetic checkpoints with transformers' MusicGen parameter names and shapes are written
to a temp dir and merged by `merge_checkpoints` in a child process, whose wall time and peak RSS
growth (VmHWM after the merge minus VmRSS before it) are compared with one checkpoint's size;
target: growth below 1.3x one checkpoint. The merge writes shards of at most MAX_SHARD_BYTES
(musicgen_cfg/checkpoint.py), each held in memory once, so the growth is about one shard. (b) LiveMerge.set_lambda is timed on a module of the
same shapes. Prints a table; results are merged into bench/results/merge.json (one entry per part
and device, so CPU and GPU runs on different machines add up).
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from merging.live import LiveMerge  # noqa: E402
from musicgen_cfg.checkpoint import MAX_SHARD_BYTES, TensorInfo, write_sharded  # noqa: E402

RESULTS = REPO / "bench" / "results" / "merge.json"
RSS_TARGET = 1.3  # peak RSS growth / one checkpoint
LIVE_TARGET_MS_H100 = 20.0
T5_BASE_HIDDEN = 768  # musicgen-small's text encoder width, the input of enc_to_dec_proj

# Runs in a child process so that its peak RSS is the merge's alone. Writing 5 to clear_refs resets
# VmHWM to the current RSS (Linux), so the peak left by imports does not count.
MERGE_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
from merging.merge import merge_checkpoints

def status_bytes(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    peak_reset = True
except OSError:
    peak_reset = False
before = status_bytes("VmRSS")
start = time.perf_counter()
merge_checkpoints(sys.argv[1:3], sys.argv[3], lam=0.5)
wall = time.perf_counter() - start
print(json.dumps({"wall_s": wall, "rss_before": before, "rss_peak": status_bytes("VmHWM"), "peak_reset": peak_reset}))
"""


def musicgen_small_decoder(num_layers: int) -> torch.nn.Module:
    """transformers' MusicGen decoder with musicgen-small's sizes, on the meta device (no memory)."""
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    config = MusicgenDecoderConfig(
        hidden_size=1024, num_hidden_layers=num_layers, num_attention_heads=16, ffn_dim=4096,
        vocab_size=2048, num_codebooks=4, pad_token_id=2048, bos_token_id=2048,
    )  # fmt: skip
    with torch.device("meta"):
        return MusicgenForCausalLM(config)


def layout_of(module: torch.nn.Module, prefix: str = "") -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    return [(prefix + name, t.dtype, tuple(t.shape)) for name, t in module.state_dict().items()]


def checkpoint_layout(num_layers: int) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """(name, dtype, shape) of musicgen-small's trainable parts as MusicgenForConditionalGeneration
    names them: the decoder under `decoder.`, then enc_to_dec_proj."""
    layout = layout_of(musicgen_small_decoder(num_layers), prefix="decoder.")
    layout += [("enc_to_dec_proj.weight", torch.float32, (1024, T5_BASE_HIDDEN))]
    layout += [("enc_to_dec_proj.bias", torch.float32, (1024,))]
    return layout


def synthetic_tensor(name: str, shape: tuple[int, ...], seed: int, device: str = "cpu") -> torch.Tensor:
    """The same values for the same (name, seed) on every access, generated on `device`."""
    generator = torch.Generator(device=device).manual_seed(zlib.crc32(f"{name}:{seed}".encode()))
    return torch.randn(shape, generator=generator, device=device) * 0.02


class SyntheticStateDict(Mapping):
    """A state dict whose tensors are generated on access, so the bench never holds a full copy."""

    def __init__(self, layout, seed: int, device: str):
        self.shapes = {name: shape for name, _, shape in layout}
        self.seed, self.device = seed, device

    def __getitem__(self, name):
        return synthetic_tensor(name, self.shapes[name], self.seed, self.device)

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self):
        return len(self.shapes)


def write_checkpoint(path: Path, layout, seed: int) -> int:
    """A synthetic checkpoint, written shard by shard (transformers' sharded convention); returns its weight bytes."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "musicgen_decoder", "hidden_size": 1024}))
    shapes = {name: shape for name, _, shape in layout}
    infos = [TensorInfo(name, path, dtype, shape) for name, dtype, shape in layout]
    files = write_sharded(path, [infos], lambda name: synthetic_tensor(name, shapes[name], seed), {"format": "pt"})
    return sum((path / file).stat().st_size for file in files)


def bench_stream(layout) -> dict:
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp:
        tmp = Path(tmp)
        size = write_checkpoint(tmp / "q", layout, seed=0)
        write_checkpoint(tmp / "d", layout, seed=1)
        child = subprocess.run(
            [sys.executable, "-c", MERGE_CHILD, str(tmp / "q"), str(tmp / "d"), str(tmp / "out")],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        measured = json.loads(child.stdout.strip().splitlines()[-1])
    growth = measured["rss_peak"] - measured["rss_before"]
    return {
        "checkpoint_bytes": size,
        "wall_s": measured["wall_s"],
        "rss_growth_bytes": growth,
        "rss_growth_over_checkpoint": growth / size,
        "max_shard_bytes": MAX_SHARD_BYTES,
        "peak_reset": measured["peak_reset"],
        "target": f"rss growth < {RSS_TARGET}x one checkpoint",
        "meets_target": growth < RSS_TARGET * size,
    }


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as cpuinfo:
        return next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "cpu"
        )


def bench_live(num_layers: int, device: str, repeats: int) -> dict:
    # Parameters without initialisation: LiveMerge fills them.
    module = musicgen_small_decoder(num_layers).to_empty(device=device)
    layout = layout_of(module)
    live_q, live_d = SyntheticStateDict(layout, 0, device), SyntheticStateDict(layout, 1, device)
    live = LiveMerge(module, live_q, live_d)
    nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
    times = []
    for step in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        live.set_lambda(0.25 if step % 2 else 0.75)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = times[1:]  # the first change pays one-off costs (kernel load, page faults)
    median = statistics.median(times)
    # The module must now hold lerp(q, d, lam) of the last change: check its first tensor.
    name, param = next(iter(module.named_parameters()))
    expected = torch.lerp(live_q[name], live_d[name], live.lam)
    max_abs_error = (param.detach() - expected).abs().max().item()
    return {
        "device": device,
        "device_name": device_name(device),
        "max_abs_error_vs_lerp": max_abs_error,
        "params": sum(p.numel() for p in module.parameters()),
        "param_bytes": nbytes,
        "median_ms": median * 1e3,
        "min_ms": min(times) * 1e3,
        "repeats": repeats,
        # lerp reads q and d and writes the parameter: three passes over the weights
        "effective_gb_per_s": 3 * nbytes / median / 1e9,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 decoder layers instead of 24")
    parser.add_argument("--device", default="cpu", help="device of the LiveMerge part (cpu, cuda)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed lambda changes (default 5 cpu, 50 cuda)"
    )
    parser.add_argument("--skip-stream", action="store_true", help="only the LiveMerge part")
    args = parser.parse_args()
    torch.set_num_threads(1)
    num_layers = 2 if args.small else 24
    size_tag = "small-2-layers" if args.small else "musicgen-small"
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    meta = {"torch": torch.__version__, "python": platform.python_version(), "size": size_tag}

    rows = []
    if not args.skip_stream:
        stream = bench_stream(checkpoint_layout(num_layers)) | meta
        results[f"stream/{size_tag}"] = stream
        rows.append(
            (
                "streaming merge (lerp, 2 ckpts)",
                f"{stream['checkpoint_bytes'] / 1e9:.2f} GB ckpt",
                f"{stream['wall_s']:.1f} s",
                f"RSS +{stream['rss_growth_bytes'] / 1e6:.0f} MB = {stream['rss_growth_over_checkpoint']:.3f}x ckpt",
                "ok" if stream["meets_target"] else "MISSED",
            )
        )
    repeats = args.repeats or (50 if args.device.startswith("cuda") else 5)
    live = bench_live(num_layers, args.device, repeats) | meta
    results[f"live/{size_tag}/{args.device}"] = live
    target = (
        f"<= {LIVE_TARGET_MS_H100:.0f} ms on H100" if args.device.startswith("cuda") else "no target on CPU"
    )
    rows.append(
        (
            f"LiveMerge.set_lambda ({live['device_name']})",
            f"{live['param_bytes'] / 1e9:.2f} GB params",
            f"{live['median_ms']:.1f} ms median",
            f"{live['effective_gb_per_s']:.1f} GB/s effective",
            target,
        )
    )

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
