"""The report side of bench/sampler.py: the speed ratios per configuration, the goals met or not, the markdown table,
and the machine and versions a run was measured on. Torch-light, so bench/gpu_check.py reads a sampler JSON's
goals without importing transformers.

    .venv/bin/python -c "import json; from bench.sampler_report import targets; \
        print(targets(json.load(open('bench/results/sampler_cpu.json'))))"
"""

import platform
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def targets(report: dict) -> dict:
    """Issue 14's targets against what this run measured: {name: {"target", "measured", "met"}}; absent
    when this run did not measure it. GPU: bf16, musicgen-small shapes; CPU: tiny preset, every batch."""
    out = {}

    def add(name, target, measured, met):
        out[name] = {"target": target, "measured": measured, "met": bool(met)}

    for section in report["sections"]:
        summary = {(r["batch"], r["cfg"]): r for r in section.get("summary", [])}
        ours = {(r["batch"], r["cfg"]): r for r in section["results"] if r["impl"] == "ours"}
        speedups = {key: r["speedup_ours_over_transformers"] for key, r in summary.items() if "speedup_ours_over_transformers" in r}
        if report["device"] == "cpu" and report["preset"] == "tiny" and speedups:
            add(f"cpu_{section['dtype']}_ours_over_transformers_all_batches", ">= 3x", min(speedups.values()),
                min(speedups.values()) >= 3)
            # issue 22: batch 1 and 8, ours at its faster setting (eager or compile=True) per configuration
            best = [max(r.get("speedup_ours_over_transformers", 0), r.get("speedup_ours_compiled_over_transformers", 0))
                    for (batch, _), r in summary.items() if batch in (1, 8)]
            if best:
                add(f"cpu_{section['dtype']}_best_ours_over_transformers_batch_1_and_8", ">= 3x", min(best), min(best) >= 3)
        if not (report["device"].startswith("cuda") and report["preset"] == "small" and section["dtype"] == "bfloat16"):
            continue
        one = [speedups[(1, cfg)] for cfg in (False, True) if (1, cfg) in speedups]
        if one:
            add("gpu_bf16_batch1_ours_over_transformers", ">= 10x", min(one), min(one) >= 10)
        many = [speedups[(64, cfg)] for cfg in (False, True) if (64, cfg) in speedups]
        if many:
            add("gpu_bf16_batch64_ours_over_transformers", ">= 5x", min(many), min(many) >= 5)
        if (1, False) in ours:
            ms = ours[(1, False)]["ms_per_step"]
            add("gpu_bf16_batch1_ms_per_step", "<= 1.3", ms, ms <= 1.3)
            floor = section.get("weight_read_floor", {}).get("floor_ms_per_step")
            if floor:
                add("gpu_bf16_batch1_over_weight_read_floor", "<= 3x", ms / floor, ms / floor <= 3)
        ratio = section.get("throughput", {}).get("best", {}).get("ratio_off_over_on")
        if ratio is not None:
            add("gpu_bf16_throughput_cfg_off_over_on", ">= 1.8x", ratio, ratio >= 1.8)
    return out


def summarize(results: list[dict]) -> list[dict]:
    """Per (batch, cfg): ours/transformers speed ratio; per (impl, batch): CFG-on / CFG-off cost."""
    by = {(r["impl"], r["batch"], r["cfg"]): r for r in results}
    rows = []
    for batch in sorted({r["batch"] for r in results}):
        for cfg in (False, True):
            ours, theirs = by.get(("ours", batch, cfg)), by.get(("transformers", batch, cfg))
            row = {"batch": batch, "cfg": cfg}
            if ours and theirs:
                row["speedup_ours_over_transformers"] = theirs["ms_per_step"] / ours["ms_per_step"]
            compiled = by.get(("ours_compiled", batch, cfg))
            if compiled and theirs:
                row["speedup_ours_compiled_over_transformers"] = theirs["ms_per_step"] / compiled["ms_per_step"]
            for name, r in (("ours", ours), ("transformers", theirs)):
                off = by.get((name, batch, False))
                if r and cfg and off:
                    row[f"cfg_cost_ratio_{name}"] = r["ms_per_step"] / off["ms_per_step"]
            rows.append(row)
    return rows


def table(section: dict) -> str:
    by = {(r["impl"], r["batch"], r["cfg"]): r for r in section["results"]}
    summary = {(s["batch"], s["cfg"]): s for s in section.get("summary", [])}
    cuda = any(isinstance(r.get("ops_per_step"), dict) and "cuda_kernels" in r["ops_per_step"] for r in section["results"])
    unit = "kernels/step" if cuda else "ops/step"
    lines = [f"dtype {section['dtype']}  (steps: ours {section['steps_ours']}, transformers {section['steps_transformers']})",
             f"| batch | CFG | ours frames/s | ours ms/step | ours {unit} | transformers frames/s | transformers ms/step "
             f"| transformers {unit} | ours/transformers | CFG cost ours | CFG cost transformers | ours_nocompile ms/step "
             f"| ours_compiled ms/step | ours_compiled {unit} | ours_compiled/transformers | its first call s |",
             "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def fmt(value, spec):
        return format(value, spec) if value is not None else "n/a"

    def ops(r):
        counts = r and r.get("ops_per_step")
        return counts.get("cuda_kernels" if cuda else "aten_ops") if isinstance(counts, dict) else None

    for batch in sorted({r["batch"] for r in section["results"]}):
        for cfg in (False, True):
            o, t, s = by.get(("ours", batch, cfg)), by.get(("transformers", batch, cfg)), summary.get((batch, cfg), {})
            n, c = by.get(("ours_nocompile", batch, cfg)), by.get(("ours_compiled", batch, cfg))
            lines.append(
                f"| {batch} | {'on' if cfg else 'off'} | {fmt(o and o['frames_per_s'], '.0f')} | {fmt(o and o['ms_per_step'], '.3f')} "
                f"| {fmt(ops(o), '.0f')} | {fmt(t and t['frames_per_s'], '.0f')} | {fmt(t and t['ms_per_step'], '.3f')} "
                f"| {fmt(ops(t), '.0f')} | {fmt(s.get('speedup_ours_over_transformers'), '.2f')}x "
                f"| {fmt(s.get('cfg_cost_ratio_ours'), '.2f') if cfg else '-'} "
                f"| {fmt(s.get('cfg_cost_ratio_transformers'), '.2f') if cfg else '-'} "
                f"| {fmt(n and n['ms_per_step'], '.3f')} | {fmt(c and c['ms_per_step'], '.3f')} | {fmt(ops(c), '.0f')} "
                f"| {fmt(s.get('speedup_ours_compiled_over_transformers'), '.2f')}x | {fmt(c and c['first_call_s'], '.1f')} |")
    for e in section["errors"]:
        lines.append(f"ERROR {e.get('impl', e.get('where'))} batch {e.get('batch')} cfg {e.get('cfg')}: {e['error']}")
    sweep = section.get("throughput")
    if sweep:
        lines += ["", f"throughput ({sweep['steps']} steps per request; ours, same weights)",
                  "| batch | CFG off frames/s | CFG on frames/s | off / on |", "|---:|---:|---:|---:|"]
        rows = {(r["batch"], r["cfg"]): r for r in sweep["results"]}
        for batch in sweep["batches"]:
            off, on = rows.get((batch, False), {}), rows.get((batch, True), {})
            ratio = off["frames_per_s"] / on["frames_per_s"] if "frames_per_s" in off and "frames_per_s" in on else None
            lines.append(f"| {batch} | {fmt(off.get('frames_per_s'), '.0f') if 'error' not in off else off['error']} "
                         f"| {fmt(on.get('frames_per_s'), '.0f') if 'error' not in on else on['error']} | {fmt(ratio, '.2f')} |")
        best = sweep.get("best", {})
        if "ratio_off_over_on" in best:
            lines.append(f"best: CFG off {best['cfg_off']['frames_per_s']:.0f} frames/s (batch {best['cfg_off']['batch']}), "
                         f"CFG on {best['cfg_on']['frames_per_s']:.0f} (batch {best['cfg_on']['batch']}): "
                         f"{best['ratio_off_over_on']:.2f}x")
    return "\n".join(lines)


def pinned_versions() -> dict:
    """The versions this repository pins (Makefile TORCH_PIN, pyproject's transformers range), to set beside `versions`."""
    makefile = (REPO / "Makefile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_pin = next((line.split("?=", 1)[1].strip() for line in makefile.splitlines() if line.startswith("TORCH_PIN")), None)
    tf_pin = next((line.strip().strip('",') for line in pyproject.splitlines() if line.strip().startswith('"transformers')), None)
    import torch

    return {"torch": torch_pin, "transformers": tf_pin,
            "torch_matches": torch_pin is not None and torch.__version__.split("+")[0] == torch_pin.split("==")[-1]}


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "cpu")
    except OSError:
        return platform.processor() or "cpu"
