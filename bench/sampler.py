"""Benchmark of token generation: our sampler vs transformers' MusicGen generate() on the SAME weights.

    .venv/bin/python bench/sampler.py                                   # CPU, tiny preset, 1 thread (~4-5 min)
    python bench/sampler.py --preset small --device cuda --dtype bfloat16 # one GPU config set
    python bench/sampler.py --all-gpu                                   # THE GPU run: everything below, one JSON

Both sides sample with top_k=250, temperature 1, for the same number of decoder steps (default 250),
with CFG (guidance_scale=3, cond + null rows in one batched pass) and without, at batch 1, 8 and 64.
Timed: transformers' `generate()` from token ids, with the EnCodec decode replaced by a no-op (audio
is not timed); ours: the text encoder + `musicgen_cfg.sampler.sample` (both include the text encoder).
frames/s = batch * steps / seconds. Every configuration is wrapped in try/except: a failure is
recorded as an error string in the JSON and the run goes on; the JSON is rewritten after each one.

Per configuration also: operators / CUDA kernels per decoder step from the torch profiler (see
`ops_per_step`), for both implementations. After the batch table, a throughput sweep (ours only):
frames/s over growing batches with CFG off (guidance 1: what the distilled model costs) and on
(guidance 3: base model + CFG), same weights, up to the largest batch that fits; `best` gives the
highest frames/s of each and their ratio (the paper's "half the cost" must show there).

--all-gpu (musicgen-small shapes): bfloat16 then float32; ours (torch.compile + CUDA graph),
ours_nocompile (CUDA graph only) and transformers; the weight-read floor (decoder bytes / measured
copy bandwidth); the throughput sweep in bfloat16.

The first call of each configuration is timed separately ("first call", includes one-off costs and,
on CUDA, compilation and the graph capture); the steady time is the median of the next `--repeats`
calls. On CUDA `sample()` captures its step graph on EVERY request (the KV cache is per request), so
steady times include one capture; `per_request_overhead_s` (a K-step request) estimates that fixed cost.

Memory: our KV cache is preallocated once per request; its size from the shapes is reported; on
CUDA also the allocator's peak during generation vs before/after (both implementations).
Results: bench/results/sampler_cpu.json or sampler_cuda.json (`--out` to override), with the torch /
transformers versions used beside the ones this repository pins, and the machine's load average.
"""

import argparse
import functools
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import transformers  # noqa: E402

from bench.sampler_measure import (  # noqa: E402
    kv_cache_bytes,
    measure_pair,
    ops_per_step,
    weight_read_floor,
)
from bench.sampler_report import device_name, pinned_versions, summarize, table, targets  # noqa: E402
from musicgen_cfg.checkpoint import atomic_write_text  # noqa: E402
from musicgen_cfg.conditioning import TextEncoder  # noqa: E402
from musicgen_cfg.lm import MusicgenLM  # noqa: E402
from musicgen_cfg.model import load_lm_state  # noqa: E402
from musicgen_cfg.sampler import SamplingConfig, sample  # noqa: E402
from musicgen_cfg.tiny import T5_BASE, tiny_musicgen  # noqa: E402

GUIDANCE = 3.0
TOP_K = 250
TEMPERATURE = 1.0
PROMPTS = ["a joyful jig with fiddle", "sad piano", "calm ambient organ", "fast rock with drums and bass",
           "a dark minor hymn", "lofi beat with piano", "bright pop song", "slow folk guitar melody"]
# ours with the sampler's default (torch.compile on CUDA, eager on CPU) and, for comparison, without compile
# (CUDA) and with it (CPU: Inductor's C++ code for the whole decode step, SamplingConfig(compile=True))
OURS_IMPLS = {"ours": None, "ours_nocompile": False, "ours_compiled": True}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# CPU preset: musicgen_cfg.tiny (T5 of width 48, tiny EnCodec), decoder widened to 128 with MusicGen's
# real vocabulary (2048) so that top-k 250 filters for real.
TINY = dict(hidden_size=128, num_layers=2, num_heads=4, vocab_size=2048, num_codebooks=4, text_hidden_size=48,
            ffn_dim=512, max_positions=2048)
# musicgen-small shapes (random weights); T5-base-shaped text encoder; a small EnCodec (not timed).
SMALL = dict(hidden_size=1024, num_layers=24, num_heads=16, ffn_dim=4096, vocab_size=2048, num_codebooks=4,
             max_positions=2048, text_hidden_size=768, text=T5_BASE)


# ----------------------------------------------------------------------------------------------- models
def build(preset: str, device: str, dtype: torch.dtype):
    """(transformers model, our LM with the same weights, our text encoder over the same T5, tokenizer)."""
    hf, tokenizer = tiny_musicgen(**(TINY if preset == "tiny" else SMALL), device=device)
    hf = hf.to(dtype).eval()
    text_width = hf.text_encoder.config.d_model
    with torch.device(device):
        lm = MusicgenLM(hf.decoder.config, text_width)
    lm = lm.to(dtype)
    state = {k: v for k, v in hf.state_dict().items() if k.startswith(("decoder.", "enc_to_dec_proj."))}
    load_lm_state(lm, state, f"{preset} preset")
    lm.eval().requires_grad_(False)
    hf.requires_grad_(False)
    return hf, lm, TextEncoder(hf.text_encoder, tokenizer, name=f"{preset}-t5"), tokenizer


def no_audio_decode(hf, captured: dict):
    """Replace EnCodec decoding by a no-op that records the codes (audio is not timed)."""

    def decode(codes, *args, **kwargs):
        captured["codes"] = codes[0]
        return SimpleNamespace(audio_values=torch.zeros(codes.shape[1], 1, 1, device=codes.device))

    hf.audio_encoder.decode = decode


# ------------------------------------------------------------------------------------------------ calls
def prompts_for(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


def ours_call(lm, text_encoder, batch: int, steps: int, cfg: bool, compile: bool | None = None):
    frames = steps - lm.num_codebooks + 1
    config = SamplingConfig(guidance_scale=GUIDANCE if cfg else 1.0, temperature=TEMPERATURE, top_k=TOP_K,
                            compile=compile)
    prompts = prompts_for(batch)

    def run():
        codes = sample(lm, text_encoder.encode(prompts), frames, config, list(range(batch)))
        assert codes.shape == (batch, lm.num_codebooks, frames), codes.shape
        return codes

    return run


def hf_call(hf, tokenizer, batch: int, steps: int, cfg: bool, device: str, captured: dict):
    tokens = tokenizer(prompts_for(batch), padding=True, return_tensors="pt").to(device)
    frames = steps - hf.decoder.num_codebooks + 1

    def run():
        torch.manual_seed(0)
        captured.pop("codes", None)
        with torch.no_grad():
            hf.generate(**tokens, do_sample=True, top_k=TOP_K, temperature=TEMPERATURE,
                        guidance_scale=GUIDANCE if cfg else 1.0, max_new_tokens=steps)
        codes = captured["codes"]
        assert codes.shape == (batch, hf.decoder.num_codebooks, frames), codes.shape

    return run


def impl_call(impl: str, models: tuple, batch: int, cfg: bool, device: str, captured: dict, steps: int):
    """The timed call of `impl` (ours / ours_nocompile / ours_compiled / transformers) for `steps` decoder steps."""
    hf, lm, text_encoder, tokenizer = models
    if impl in OURS_IMPLS:
        return ours_call(lm, text_encoder, batch, steps, cfg, OURS_IMPLS[impl])
    return hf_call(hf, tokenizer, batch, steps, cfg, device, captured)


# ----------------------------------------------------------------------------------------------- run
def run_dtype(args, section: dict, device: str, hf_steps: int, hf_repeats: int, log, save) -> dict:
    """Fill `section` (already in the report) configuration by configuration; `save()` after each one."""
    preset, dtype_name = args.preset, section["dtype"]
    dtype = DTYPES[dtype_name]
    section.update({"steps_ours": args.steps, "steps_transformers": hf_steps, "repeats_ours": args.repeats,
                    "repeats_transformers": hf_repeats, "results": [], "errors": []})
    try:
        start = time.perf_counter()
        hf, lm, text_encoder, tokenizer = build(preset, device, dtype)
        section["build_s"] = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - recorded, the other dtype may still run
        section["errors"].append({"where": "build", "error": f"{type(err).__name__}: {err}",
                                  "traceback": traceback.format_exc(limit=4)})
        log(f"[{dtype_name}] build failed: {err}")
        return section
    captured: dict = {}
    no_audio_decode(hf, captured)
    section["params_decoder"] = sum(p.numel() for p in lm.parameters())
    if device.startswith("cuda"):
        section["weight_read_floor"] = weight_read_floor(lm)
        log(f"[{dtype_name}] weight-read floor {section['weight_read_floor']['floor_ms_per_step']:.3f} ms/step "
            f"({section['weight_read_floor']['weights_mb']:.0f} MB at {section['weight_read_floor']['read_gb_per_s']:.0f} GB/s)")
    for batch in args.batches:
        for cfg in (False, True):
            key = {"batch": batch, "cfg": cfg, "guidance_scale": GUIDANCE if cfg else 1.0}
            steps_here = args.steps_large if (batch >= 64 and args.steps_large) else args.steps
            hf_steps_here = min(hf_steps, steps_here)
            reps = args.repeats_large if (batch >= 64 and args.repeats_large) else args.repeats
            hf_reps = min(hf_repeats, reps)
            runs, steps, repeats = {}, {}, {}
            try:
                for impl in args.impls:
                    ours = impl in OURS_IMPLS
                    steps[impl], repeats[impl] = (steps_here, reps) if ours else (hf_steps_here, hf_reps)
                    runs[impl] = impl_call(impl, (hf, lm, text_encoder, tokenizer), batch, cfg, device, captured, steps[impl])
                measured = measure_pair(runs, steps, batch, repeats, device)
                if "ours" in runs and "ours_compiled" in runs:  # the same seeds: the compiled step's tokens
                    eager, compiled = runs["ours"](), runs["ours_compiled"]()
                    measured["ours_compiled"]["tokens_equal_to_eager"] = float((eager == compiled).float().mean())
            except Exception as err:  # noqa: BLE001 - one configuration's failure must not kill the run
                measured = {}
                for impl in runs:  # retry each implementation alone, so one failing side keeps the other's numbers
                    try:
                        measured.update(measure_pair({impl: runs[impl]}, steps, batch, repeats, device))
                    except Exception as err_one:  # noqa: BLE001
                        section["errors"].append({**key, "impl": impl, "error": f"{type(err_one).__name__}: {err_one}",
                                                  "traceback": traceback.format_exc(limit=4)})
                        log(f"[{dtype_name}] {impl} batch {batch} cfg {cfg}: ERROR {type(err_one).__name__}: {err_one}")
                for impl in [i for i in args.impls if i not in runs]:  # failed while setting up its call
                    section["errors"].append({**key, "impl": impl, "error": f"{type(err).__name__}: {err}"})
            for impl, res in measured.items():
                res.update(key)
                if args.count_ops and impl == "ours_compiled":  # Inductor's kernels are not aten operators; and each
                    res["ops_per_step"] = "not counted: compiled"  # profiled step count would compile the step again
                elif args.count_ops:
                    k = lm.num_codebooks
                    make = functools.partial(impl_call, impl, (hf, lm, text_encoder, tokenizer), batch, cfg, device, captured)
                    try:
                        res["ops_per_step"] = ops_per_step(make, device, k + 4, k + 4 + args.count_ops)
                    except Exception as err:  # noqa: BLE001
                        res["ops_per_step"] = f"{type(err).__name__}: {err}"
                if impl == "ours":
                    text_len = len(tokenizer(prompts_for(batch), padding=True)["input_ids"][0])
                    res["kv_cache"] = kv_cache_bytes(lm, batch * (2 if cfg else 1), res["steps"], text_len, dtype)
                    if device.startswith("cuda"):
                        try:  # fixed per-request cost: a K-step request (cache allocation, cross K/V, graph capture)
                            k = lm.num_codebooks
                            over = measure_pair({"ours": ours_call(lm, text_encoder, batch, k, cfg)}, {"ours": k}, batch,
                                                {"ours": 3}, device)["ours"]
                            res["per_request_overhead_s"] = over["median_s"]
                            res["ms_per_step_excl_overhead"] = 1e3 * (res["median_s"] - over["median_s"]) / (res["steps"] - k)
                        except Exception as err:  # noqa: BLE001
                            res["per_request_overhead_s"] = f"{type(err).__name__}: {err}"
                section["results"].append(res)
                ops = res.get("ops_per_step")
                ops_text = (f"  {ops['top_level_ops']:.0f} ops/step" + (f", {ops['cuda_kernels']:.0f} kernels/step" if "cuda_kernels" in ops else "")
                            if isinstance(ops, dict) else "")
                log(f"[{dtype_name}] {impl:12s} batch {batch:3d} cfg {'on ' if cfg else 'off'}: "
                    f"{res['ms_per_step']:8.3f} ms/step  {res['frames_per_s']:10.1f} frames/s{ops_text}  "
                    f"(first {res['first_call_s']:.2f}s, {res['steps']} steps x {res['repeats']})")
            if device.startswith("cuda"):
                gc.collect()
                torch.cuda.empty_cache()
            section["summary"] = summarize(section["results"])
            save()
    if section["dtype"] in args.throughput_dtypes:
        section["throughput"] = {"steps": args.throughput_steps, "batches": args.throughput_batches, "results": []}
        throughput(lm, text_encoder, device, section["throughput"], args.throughput_repeats, log, save)
    del hf, lm, text_encoder
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return section


def throughput(lm, text_encoder, device: str, out: dict, repeats: int, log, save) -> None:
    """frames/s of ours over a batch sweep, CFG off (guidance 1: the distilled model's cost) and on
    (guidance 3: the base model + CFG), SAME weights; a batch that runs out of memory ends that sweep.
    `best`: each mode's highest frames/s and the off / on ratio there (the paper's "half the cost")."""
    steps = out["steps"]
    for cfg in (False, True):
        for batch in out["batches"]:
            row = {"batch": batch, "cfg": cfg, "rows_per_step": batch * (2 if cfg else 1)}
            try:
                res = measure_pair({"ours": ours_call(lm, text_encoder, batch, steps, cfg)}, {"ours": steps}, batch,
                                   {"ours": repeats}, device)["ours"]
                row.update({k: res[k] for k in ("median_s", "ms_per_step", "frames_per_s", "first_call_s")})
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
            except Exception as err:  # noqa: BLE001
                row["error"] = f"{type(err).__name__}: {err}"
            out["results"].append(row)
            log(f"throughput cfg {'on ' if cfg else 'off'} batch {batch:4d}: " +
                (f"{row['frames_per_s']:10.1f} frames/s ({row['ms_per_step']:.2f} ms/step)" if "error" not in row else row["error"]))
            if device.startswith("cuda"):
                gc.collect()
                torch.cuda.empty_cache()
            save()
            if "error" in row:
                break
    best = {}
    for cfg in (False, True):
        ok = [r for r in out["results"] if r["cfg"] == cfg and "error" not in r]
        if ok:
            top = max(ok, key=lambda r: r["frames_per_s"])
            best["cfg_on" if cfg else "cfg_off"] = {"batch": top["batch"], "frames_per_s": top["frames_per_s"]}
    if len(best) == 2:
        best["ratio_off_over_on"] = best["cfg_off"]["frames_per_s"] / best["cfg_on"]["frames_per_s"]
    out["best"] = best
    save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "small"], default=None, help="tiny (CPU default) or small (GPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--all-gpu", action="store_true", help="small preset on cuda: float32 and bfloat16, one JSON")
    parser.add_argument("--steps", type=int, default=250, help="decoder steps (= max_new_tokens) per request")
    parser.add_argument("--steps-large", type=int, default=None, help="steps at batch >= 64 (both implementations)")
    parser.add_argument("--repeats", type=int, default=None, help="steady calls after the first (default 3)")
    parser.add_argument("--repeats-large", type=int, default=None, help="steady calls at batch >= 64")
    parser.add_argument("--hf-steps-bf16", type=int, default=100,
                        help="--all-gpu: transformers' steps in bfloat16 (it is slow there); ms/step is compared")
    parser.add_argument("--hf-repeats", type=int, default=None, help="steady transformers calls (default = --repeats)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--impls", nargs="+", choices=[*OURS_IMPLS, "transformers"], default=None,
                        help="default: ours and transformers, on the CPU also ours_compiled (torch.compile, Inductor "
                             "C++); --all-gpu adds ours_nocompile (CUDA graph without torch.compile)")
    parser.add_argument("--count-ops", type=int, default=16,
                        help="profile ops/kernels per step over this many steps per configuration (0 = off)")
    parser.add_argument("--throughput-batches", type=int, nargs="+", default=None,
                        help="throughput sweep (ours, CFG off vs on); default CPU 8 32 128, CUDA 16 64 128 256 512")
    parser.add_argument("--throughput-steps", type=int, default=None, help="steps per throughput request (CPU 50, CUDA 100)")
    parser.add_argument("--throughput-repeats", type=int, default=2, help="steady calls per throughput batch")
    parser.add_argument("--throughput-dtypes", nargs="*", choices=list(DTYPES), default=None,
                        help="dtype sections that get the sweep (default: the run's first dtype; none = skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the same for both)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    if args.all_gpu:
        args.device, args.preset = "cuda", "small"
    if args.impls is None:
        args.impls = (["ours", "ours_nocompile", "transformers"] if args.all_gpu else
                      ["ours", "transformers"] + (["ours_compiled"] if args.device == "cpu" else []))
    args.preset = args.preset or ("tiny" if args.device == "cpu" else "small")
    cuda = args.device.startswith("cuda")
    if args.repeats is None:
        args.repeats = 3
    if not cuda:  # keep the CPU run short: batch 64 is ~50x the work of batch 1 (the same for both sides)
        args.steps_large = args.steps_large or 100
        args.repeats_large = args.repeats_large or 2
    args.throughput_batches = args.throughput_batches or ([16, 64, 128, 256, 512] if cuda else [8, 32, 128])
    args.throughput_steps = args.throughput_steps or (100 if cuda else 50)
    if args.steps < 8 or (args.steps_large is not None and args.steps_large < 8):
        parser.error("need at least 8 steps")
    torch.set_num_threads(args.threads)
    out = args.out or REPO / "bench" / "results" / f"sampler_{'cuda' if cuda else 'cpu'}.json"
    started = time.perf_counter()

    def log(msg):
        print(f"{time.perf_counter() - started:7.1f}s {msg}", flush=True)

    def save():  # after every configuration: a run cut short keeps what it measured
        report["wall_s"] = time.perf_counter() - started
        report["load_average_at_end"] = os.getloadavg()
        atomic_write_text(out, json.dumps(report, indent=1) + "\n")

    dtypes = ["bfloat16", "float32"] if args.all_gpu else [args.dtype]  # the targets are bf16: measured first
    if args.throughput_dtypes is None:
        args.throughput_dtypes = dtypes[:1]
    config = TINY if args.preset == "tiny" else SMALL
    report = {
        "benchmark": "token generation: musicgen_cfg.sampler.sample vs transformers MusicgenForConditionalGeneration.generate",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "pinned": pinned_versions(),
        "device": args.device, "device_name": device_name(args.device), "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "load_average_at_start": os.getloadavg(),  # other processes on the machine (CPU timings are shared-core)
        "cpu_count": os.cpu_count(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        "preset": args.preset, "config": config,
        "impls": args.impls,
        "settings": {"top_k": TOP_K, "temperature": TEMPERATURE, "guidance_scale_cfg_on": GUIDANCE,
                     "guidance_scale_cfg_off": 1.0, "batches": args.batches, "steps": args.steps,
                     "steps_large_batch": args.steps_large, "repeats": args.repeats, "repeats_large_batch": args.repeats_large,
                     "count_ops_steps": args.count_ops, "throughput_batches": args.throughput_batches,
                     "throughput_steps": args.throughput_steps, "throughput_dtypes": args.throughput_dtypes},
        "notes": [
            "frames/s = batch * decoder steps / seconds; ms/step = seconds / steps (median of steady calls)",
            "transformers: generate() from token ids (T5 + sampling loop), EnCodec decode replaced by a no-op",
            "ours: text encoder + musicgen_cfg.sampler.sample; CFG = one batched pass over cond + null rows on both sides",
            "CUDA: sample() captures its step in a CUDA graph on every request; first_call_s also includes cuBLAS/kernel "
            "warm-up; per_request_overhead_s is a K-step request (setup + capture)",
            "KV cache: ours is preallocated once per request ([rows, H, steps, hd] per layer); kv_cache gives its size "
            "from the shapes; transformers' dynamic cache grows by concatenation every step",
            "ops_per_step: torch profiler counts per decoder step (see ops_per_step in bench/sampler.py); on CPU every "
            "operator is a kernel, top_level_ops is what eager Python dispatches",
            "ours = the sampler's defaults (CUDA: torch.compile + CUDA graph; CPU: eager); ours_nocompile = compile=False",
            "ours_compiled (CPU) = compile=True: Inductor's C++ for the whole fixed-shape decode step; its first_call_s "
            "includes compiling (once per batch shape and CFG setting, cached on disk by Inductor); "
            "tokens_equal_to_eager: share of its tokens equal to ours (eager) on the same seeds",
            "throughput: ours only, CFG off (guidance 1, the distilled model's cost) vs on (guidance 3), same weights; "
            "best = highest frames/s over the batch sweep",
        ],
        "sections": [],
    }
    for dtype_name in dtypes:
        hf_steps = args.steps
        if args.all_gpu and dtype_name == "bfloat16":
            hf_steps = args.hf_steps_bf16
            report["notes"].append(f"bfloat16: transformers runs {hf_steps} steps per request (ours {args.steps}); "
                                   "ms/step is compared (its per-step cost grows slightly with length, so this favours transformers)")
        hf_repeats = args.hf_repeats if args.hf_repeats is not None else (2 if args.all_gpu else args.repeats)
        log(f"{args.preset} preset on {report['device_name']} ({dtype_name}), threads {torch.get_num_threads()}")
        section = {"dtype": dtype_name}
        report["sections"].append(section)
        run_dtype(args, section, args.device, hf_steps, hf_repeats, log, save)
        print(table(section), flush=True)
        report["targets"] = targets(report)
        save()
    for name, target in report["targets"].items():
        log(f"target {name}: {target}")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
