"""How bench/sampler.py measures one configuration: wall time with the device synchronised, first call apart from the
steady calls (interleaved between implementations), operators / kernels per decoder step from the torch profiler, the
weight-read floor, and the KV cache's size from its shapes.

    .venv/bin/python bench/sampler.py        # the benchmark that uses these
"""

import functools
import gc
import statistics
import time

import torch
from torch.profiler import DeviceType, ProfilerActivity, profile


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def ops_per_step(make_run, device: str, short: int, long: int) -> dict:
    """Operators and kernels per decoder step, from the torch profiler.

    Two requests of `short` and `long` steps are profiled (each after one unprofiled warm-up call:
    compilation, allocations); the difference divided by long - short is the per-step count, so the
    per-request work (text encoder, cache set-up, CUDA-graph capture) cancels out.
    aten_ops: every aten operator call, nested ones included (views, the mm inside a linear);
    top_level_ops: the aten calls made by Python (what eager dispatch pays for); cuda_kernels: GPU
    kernels executed (those replayed from a CUDA graph included); cuda_launch_calls: host-side
    cudaLaunchKernel / cudaGraphLaunch calls.
    """
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    counts = []
    for steps in (short, long):
        run = make_run(steps)
        run()
        with profile(activities=activities) as prof:
            run()
            sync(device)
        events = prof.events()
        aten = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
        top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        launches = [e for e in events if e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")]
        counts.append({"aten_ops": len(aten), "top_level_ops": len(top), "cuda_kernels": len(kernels),
                       "cuda_launch_calls": len(launches)})
    per_step = {name: (counts[1][name] - counts[0][name]) / (long - short) for name in counts[0]}
    if not cuda:
        per_step = {k: v for k, v in per_step.items() if not k.startswith("cuda")}
    return {**per_step, "profiled_steps": [short, long]}


def weight_read_floor(lm) -> dict:
    """The decode step's lower bound at batch 1: reading every decoder weight once, at the bandwidth a large
    on-device copy achieves (measured here: a copy reads and writes its bytes, so read bandwidth = 2 x bytes / time)."""
    weights = sum(p.numel() * p.element_size() for p in lm.parameters())
    buffer = torch.empty(2**30, dtype=torch.uint8, device=lm.device)
    target = torch.empty_like(buffer)
    for _ in range(3):
        target.copy_(buffer)
    copy = functools.partial(target.copy_, buffer)
    bandwidth = 2 * buffer.numel() / statistics.median(timed(copy, str(lm.device)) for _ in range(10))
    del buffer, target, copy
    torch.cuda.empty_cache()
    return {"weights_mb": weights / 2**20, "read_gb_per_s": bandwidth / 1e9, "floor_ms_per_step": 1e3 * weights / bandwidth,
            "measured": "bandwidth of a 1 GiB device-to-device copy (median of 10)"}


def kv_cache_bytes(lm, rows: int, steps: int, text_len: int, dtype: torch.dtype) -> dict:
    """Our KVCache's footprint from its shapes: self-attention [rows, H, steps, hd] x 2 x layers + cross K/V."""
    config = lm.config
    per = rows * config.hidden_size * torch.tensor([], dtype=dtype).element_size() * 2 * config.num_hidden_layers
    return {"total_mb": per * (steps + text_len) / 2**20, "self_attention_mb": per * steps / 2**20,
            "cross_attention_mb": per * text_len / 2**20, "rows": rows, "steps": steps, "text_tokens": text_len,
            "allocated": "once per request, before the first step (KVCache.__init__)"}


def first_call(run, device: str) -> dict:
    """Time the first call of a configuration on its own (one-off costs); CUDA: allocator peak during it."""
    cuda = device.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    out = {"first_call_s": timed(run, device)}
    if cuda:
        mem = {"before": before / 2**20, "peak_during": torch.cuda.max_memory_allocated() / 2**20,
               "after": torch.cuda.memory_allocated() / 2**20}
        mem["peak_growth"] = mem["peak_during"] - mem["before"]
        mem["retained_after"] = mem["after"] - mem["before"]
        out["cuda_mem_mb"] = mem
    return out


def measure_pair(runs: dict, steps: dict, batch: int, repeats: dict, device: str) -> dict:
    """First calls, then steady calls of the implementations interleaved (a shared machine's load drifts
    over time; interleaving spreads it over both). Returns {impl: result}."""
    results = {impl: first_call(run, device) for impl, run in runs.items()}
    times = {impl: [] for impl in runs}
    for r in range(max(repeats.values())):
        for impl, run in runs.items():
            if r < repeats[impl]:
                times[impl].append(timed(run, device))
    for impl, res in results.items():
        median = statistics.median(times[impl])
        res.update({"impl": impl, "batch": batch, "steps": steps[impl], "repeats": repeats[impl], "times_s": times[impl],
                    "median_s": median, "min_s": min(times[impl]), "ms_per_step": 1e3 * median / steps[impl],
                    "frames_per_s": batch * steps[impl] / median})
    return results
