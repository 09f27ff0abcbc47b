"""Memory of one distillation step (musicgen_cfg/training/distillation.py) for the MusicGen decoder shapes: a
formula per shape and mode, checked against measured bytes.

    .venv/bin/python bench/train_memory.py                  # CPU (~1-2 min): accounting check + formula table
    python bench/train_memory.py --device cuda              # GPU: also measures small, medium, large in one run
    python bench/train_memory.py --device cuda --shapes small --grad-accum 4   # one shape, another split
    python bench/train_memory.py --device cuda --shapes large --lora --out bench/results/train_memory_cuda_large_lora.json

Prints tables and saves bench/results/train_memory_<device>.json (or --out). --lora measures the shapes with
rank-16 LoRA adapters (LORA_RANK, the formula's assumption) instead of a full finetune. Every figure is labelled:
"estimated" (the formula below, from the shapes), "measured-cpu" (PyTorch's profiler memory timeline
of a real train step, a small shape) or "measured-cuda" (torch.cuda.max_memory_allocated, random weights).

The formula (bytes; N decoder parameters, D width, F MLP width, L layers, K codebooks, V vocabulary,
T frames, S = T + K - 1 decoder steps, m rows per micro-batch, r rows per rollout batch):

  static     student  16 N          fp32 weights 4 + grads 4 + AdamW exp_avg 4 + exp_avg_sq 4
                      (LoRA: 4 N frozen fp32 base + 16 A for A adapter parameters; no separate teacher)
             teacher  2 N (bf16) or 4 N (fp32)
             towers   4 x (T5 encoder + EnCodec parameters), one copy shared by student and teacher,
                      + 4 x the reward embedder's parameters when beta > 0 (CLAP: a full ClapModel)
  rollout    KV cache 2 L r S D x 2 bytes (bf16) + cross-attention K/V 2 L r S_text D x 2
             fused copies (the sampler's per request, KVCache in musicgen_cfg/lm.py): q/k/v stacked per layer
                      and the K heads in the compute dtype (bf16), 2 (3 L D^2 + K V D), + the K embedding
                      tables in the weights' dtype, K (V + 1) D x 4 (LoRA: x teacher bytes, the base's dtype)
  scoring    teacher logits kept for the loss   2 x 4 m K T V   (conditional and CFG, fp32)
             logits chain saved for backward     c x 4 m K T V   c = 4 (student logits, log-softmax, its
                                                                 exp, log-ratio) + 1 with beta > 0
             gradient of that chain (backward)   2 x 4 m K T V
             decoder activations                 L m S (34 D + 4 F), per token and layer under bf16
                                                 autocast: the fp32 residual stream at the 3 LayerNorms
                                                 12D, bf16 copies of the 5 projection inputs 10D, q k v
                                                 6D, the 2 attention outputs (= out_proj inputs) 4D,
                                                 cross q 2D, fc1 and GELU outputs 4F
               with gradient checkpointing       L m S 4D (each layer's fp32 input) + one layer's
                                                 m S (34 D + 4 F) while it is recomputed
             heads                               m S D (4 + 2K) (final LayerNorm input, K bf16 casts)
             bf16 weight casts                   2 N saved for backward (2 N / L with checkpointing)
  optimizer  4 N (LoRA: 4 A): torch's foreach AdamW (the CUDA default) allocates sqrt(exp_avg_sq) for all
             parameters at once; on CPU it loops over parameters (one parameter's worth, not modelled)
  peak       static + max(rollout, scoring, optimizer)

Not modelled: allocator fragmentation and CUDA context (~0.5-1 GB on a GPU), the teacher pass's own
transient (smaller than the student's), the reward (audio decode + embedder; chunked by the reward
pipeline), LoRA dropout copies (dropout 0 assumed).
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musicgen_cfg.config import load_config  # noqa: E402
from musicgen_cfg.training.distillation import DistillConfig, Distiller, split_rows  # noqa: E402

GB = 1e9
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shape:
    """A MusicGen decoder (facebook/musicgen-*), with T5-base text states (768 wide)."""

    name: str
    hidden: int
    layers: int
    heads: int
    ffn: int
    codebooks: int = 4
    vocab: int = 2048
    text_hidden: int = 768


SHAPES = {
    "small": Shape("musicgen-small", 1024, 24, 16, 4096),
    "medium": Shape("musicgen-medium", 1536, 48, 24, 6144),
    "large": Shape("musicgen-large", 2048, 48, 32, 8192),
}
# The configs each shape is trained with (large has none shipped: the medium recipe).
SHAPE_CONFIGS = {"small": "musicgen_small_diversity.yaml", "medium": "musicgen_medium_quality.yaml",
                 "large": "musicgen_medium_quality.yaml"}
LORA_RANK = 16  # assumed adapters on every attention projection and both MLP matrices
LORA_OVERRIDES = ["--lora.rank", str(LORA_RANK)]  # --lora: that section (lora.py's default targets are those layers)
CHECK_SHAPE = Shape("check", 128, 2, 4, 512, vocab=128, text_hidden=48)  # the CPU accounting check (bf16 on CPU is slow)


def decoder_parameters(shape: Shape) -> int:
    """N: parameters of our MusicgenLM for the shape, counted on the meta device (no memory)."""
    from transformers import MusicgenDecoderConfig

    from musicgen_cfg.lm import MusicgenLM

    config = MusicgenDecoderConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                                   num_attention_heads=shape.heads, ffn_dim=shape.ffn, num_codebooks=shape.codebooks)
    with torch.device("meta"):
        return sum(p.numel() for p in MusicgenLM(config, shape.text_hidden).parameters())


def tower_parameters(config=None) -> int:
    """T5 encoder + EnCodec parameters of a MusicgenConfig, counted on meta; default MusicGen's: T5-base and
    EnCodec 32 kHz (musicgen_cfg.tiny's T5_BASE and ENCODEC_32KHZ, their published hyper-parameters)."""
    from transformers import EncodecModel, T5EncoderModel

    from musicgen_cfg.tiny import ENCODEC_32KHZ, T5_BASE, musicgen_config

    config = config or musicgen_config(vocab_size=2048, text=T5_BASE, audio=ENCODEC_32KHZ)
    with torch.device("meta"):
        towers = (T5EncoderModel(config.text_encoder), EncodecModel(config.audio_encoder))
        return sum(p.numel() for m in towers for p in m.parameters())


def clap_parameters() -> int:
    """The reward embedder of the musicgen configs: a ClapModel (transformers' default ClapConfig = htsat shapes)."""
    from transformers import ClapConfig, ClapModel

    with torch.device("meta"):
        return sum(p.numel() for p in ClapModel(ClapConfig()).parameters())


def lora_parameters(shape: Shape, rank: int = LORA_RANK) -> int:
    """A = rank x (d_in + d_out) summed over q/k/v/out of both attentions, fc1 and fc2, per layer."""
    per_layer = 8 * (2 * shape.hidden) + 2 * (shape.hidden + shape.ffn)
    return rank * per_layer * shape.layers


@dataclass(frozen=True)
class Run:
    """One process's work in a step."""

    rows: int  # P x G / processes
    micro_rows: int  # m
    rollout_rows: int  # r
    frames: int  # T
    beta_positive: bool
    checkpointing: bool
    teacher_bytes: int  # 2 (bf16) or 4
    lora: bool = False
    text_tokens: int = 16

    @classmethod
    def of(cls, config: DistillConfig, processes: int = 1, lora: bool = False) -> "Run":
        local_prompts, micro = split_rows(config, processes)
        rows = local_prompts * config.generations
        return cls(rows, micro, min(config.rollout_batch_size or rows, rows), config.num_frames, config.beta > 0,
                   config.gradient_checkpointing, 2 if config.teacher_dtype == "bfloat16" else 4, lora)


def kv_cache(shape: Shape, rows: int, steps: int, text_tokens: int, element_bytes: int = 2) -> int:
    """Bytes of the sampler's KVCache: self-attention K and V over `steps`, cross-attention K and V over the text."""
    return 2 * shape.layers * rows * (steps + text_tokens) * shape.hidden * element_bytes


def fused_copies(shape: Shape, weight_bytes: int = 4, compute_bytes: int = 2) -> int:
    """Bytes of the fused weights KVCache derives per request (musicgen_cfg/lm.py): q/k/v stacked per layer
    [3D, D] and the K heads [K V, D], cast to the compute dtype, and the K embedding tables [K (V + 1), D] in
    the weights' dtype."""
    D, K, V = shape.hidden, shape.codebooks, shape.vocab
    return (3 * shape.layers * D * D + K * V * D) * compute_bytes + K * (V + 1) * D * weight_bytes


def estimate(shape: Shape, run: Run, n: int, towers: int, embedder: int = 0) -> dict[str, float]:
    """The formula of the module docstring: bytes per term, plus 'static', 'rollout', 'scoring', 'peak'."""
    D, F, L, K, V = shape.hidden, shape.ffn, shape.layers, shape.codebooks, shape.vocab
    T, m, r = run.frames, run.micro_rows, run.rollout_rows
    S = T + K - 1
    logits = 4 * m * K * T * V
    per_token_layer = 34 * D + 4 * F
    terms = {
        "student": 4 * n + 16 * lora_parameters(shape) if run.lora else 16 * n,
        "teacher": 0 if run.lora else run.teacher_bytes * n,
        "towers": 4 * towers + (4 * embedder if run.beta_positive else 0),
        "kv_cache": kv_cache(shape, r, S, run.text_tokens),
        "fused_copies": fused_copies(shape, run.teacher_bytes if run.lora else 4),
        "teacher_logits": 2 * logits,
        "logits_chain": (5 if run.beta_positive else 4) * logits,
        "logits_backward": 2 * logits,
        "activations": (L * m * S * 4 * D + m * S * per_token_layer) if run.checkpointing else L * m * S * per_token_layer,
        "heads": m * S * D * (4 + 2 * K),
        "weight_casts": 2 * n // L if run.checkpointing else 2 * n,
        "optimizer": 4 * lora_parameters(shape) if run.lora else 4 * n,
    }
    terms["static"] = terms["student"] + terms["teacher"] + terms["towers"]
    terms["rollout"] = terms["kv_cache"] + terms["fused_copies"]
    terms["scoring"] = sum(terms[k] for k in ("teacher_logits", "logits_chain", "logits_backward", "activations",
                                              "heads", "weight_casts"))
    terms["peak"] = terms["static"] + max(terms["rollout"], terms["scoring"], terms["optimizer"])
    return terms


# ------------------------------------------------------------------------------------------ measuring

def write_checkpoint(shape: Shape, workdir: Path, device: str) -> str:
    """Random-weight checkpoint of the shape (tiny text/audio towers)."""
    from musicgen_cfg.tiny import save_tiny_musicgen

    return str(save_tiny_musicgen(workdir / shape.name, hidden_size=shape.hidden, num_layers=shape.layers,
                                  num_heads=shape.heads, vocab_size=shape.vocab, ffn_dim=shape.ffn,
                                  text_hidden_size=shape.text_hidden, device=device))


def distiller_for(shape: Shape, config_name: str, workdir: Path, device: str, overrides: list[str]) -> Distiller:
    return distiller_on(write_checkpoint(shape, workdir, device), config_name, workdir, device, overrides)


def distiller_on(model: str, config_name: str, workdir: Path, device: str, overrides: list[str]) -> Distiller:
    """A Distiller of configs/<config_name> + overrides on the checkpoint `model`, with prompts and, where the
    config names a CLAP reward embedder (not downloadable offline), a random contrastive one written to workdir."""
    from accelerate import Accelerator

    from rl.embedders import ContrastiveMusicEmbedder

    ContrastiveMusicEmbedder().save(workdir / "embedder")
    (workdir / "prompts.txt").write_text("\n".join(f"a jazz song with piano number {i}" for i in range(64)))
    path = ROOT / "configs" / config_name
    reward = (["--embedder", str(workdir / "embedder")]
              if load_config(DistillConfig, path).embedder.startswith("clap:") else [])
    config = load_config(DistillConfig, path, ["--model", model, "--prompts", str(workdir / "prompts.txt"),
                                               "--device", device, *reward, "--out", str(workdir / "run"),
                                               "--tensorboard", "false", *overrides])
    return Distiller(config, Accelerator(cpu=device == "cpu", mixed_precision="no"))


def profile_step(distiller: Distiller, step: int) -> dict[str, float]:
    """Peak bytes of one train step by category, from the CPU profiler's memory timeline.

    The rollout and the reward are replaced by their results computed beforehand: the KV cache is
    measured on its own (tensor bytes), the reward is not part of the formula, and the rollout's ~100
    ops per decoding step would make the timeline slow to build."""
    from torch.profiler import ProfilerActivity, profile

    prompts, seeds, _ = rollout_arguments(distiller, step)
    codes = distiller.rollout(prompts, seeds, False)
    rewards = distiller.diversity_rewards(codes, prompts)
    distiller.rollout, distiller.diversity_rewards = (lambda *args: codes), (lambda *args: rewards)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        distiller.train_step(step)
    del distiller.rollout, distiller.diversity_rewards
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_memory_timeline(f"{tmp}/timeline.json", device="cpu")  # [times, sizes [t, 1 + categories]]
        _, sizes = json.loads(Path(f"{tmp}/timeline.json").read_text())
    names = ["parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail",
             "unknown"]
    sizes = torch.tensor(sizes, dtype=torch.float64)[:, 1:]
    total = sizes.sum(1)
    at_peak = sizes[int(total.argmax())]
    return {"peak": total.max().item(), **{f"at_peak_{n}": v.item() for n, v in zip(names, at_peak)}}


def rollout_arguments(distiller: Distiller, step: int):
    """(prompts, seeds, from_teacher) of the step's rollout on one process, without consuming the prompt draw."""
    from musicgen_cfg.training.distillation import rollout_seeds

    config, state = distiller.config, distiller.data_rng.getstate()
    prompts = [p for p in distiller.prompts.draw(config.prompts_per_step, distiller.data_rng)
               for _ in range(config.generations)]
    distiller.data_rng.setstate(state)
    return prompts, rollout_seeds(config.seed, step, range(len(prompts))), False


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cpu_check(workdir: Path) -> dict:
    """A real train step on CHECK_SHAPE: tensor-level bytes vs the formula's terms, and the profiled peak."""
    shape = CHECK_SHAPE
    overrides = ["--num-frames", "32", "--prompts-per-step", "2", "--generations", "4", "--grad-accum", "2",
                 "--rollout-batch-size", "8", "--threads", "2", "--heldout-prompts", "1"]
    distiller = distiller_for(shape, "musicgen_small_diversity.yaml", workdir, "cpu",
                              [*overrides, "--guidance-scale", "3"])
    distiller.train_step(0)  # allocates the optimizer state
    distiller.accumulate_gradients(1)  # the gradients, as they are when the optimizer steps
    lm = distiller.student.lm
    n = sum(p.numel() for p in lm.parameters())
    towers = sum(p.numel() for m in (distiller.student.text_encoder.encoder, distiller.student.codec.model)
                 for p in m.parameters())
    embedder = sum(p.numel() for p in distiller.embedder.parameters())
    run = Run.of(distiller.config)
    formula = estimate(shape, run, n, towers, embedder)
    optimizer_state = [v for s in distiller.optimizer.state.values() for v in s.values() if v.dim() > 0]
    measured = {
        "student": tensor_bytes(lm.parameters()) + tensor_bytes(p.grad for p in lm.parameters())
        + tensor_bytes(optimizer_state),
        "teacher": tensor_bytes(distiller.teacher.lm.parameters()),
        "towers": 4 * towers + tensor_bytes(distiller.embedder.parameters()),
    }
    from musicgen_cfg.lm import KVCache

    cond = distiller.student.condition(["a jazz song"] * run.rollout_rows)
    with distiller.autocast():
        cache = KVCache(lm, cond, run.frames + shape.codebooks - 1)
    measured["kv_cache"] = tensor_bytes([*cache.keys, *cache.values, *(t for kv in cache.cross for t in kv)])
    measured["fused_copies"] = tensor_bytes([cache.embed_table, *cache.qkv, cache.heads])
    formula_kv = estimate(shape, Run(**{**asdict(run), "text_tokens": cond.hidden.shape[1]}), n, towers)["kv_cache"]
    distiller.optimizer.zero_grad(set_to_none=True)
    rows = [{"term": k, "measured_bytes": measured[k], "formula_bytes": formula_kv if k == "kv_cache" else formula[k],
             "how": "measured-cpu: tensor nbytes"} for k in measured]
    profiles = {}
    for step, checkpointing in enumerate((True, False), start=2):
        lm.gradient_checkpointing = checkpointing
        profiles[checkpointing] = profiled = profile_step(distiller, step)
        predicted = estimate(shape, Run(**{**asdict(run), "checkpointing": checkpointing}), n, towers, embedder)
        state = sum(profiled[f"at_peak_{k}"] for k in ("parameter", "optimizer_state", "gradient"))
        how = "measured-cpu: profiler memory timeline of train_step at its peak (rollout, reward precomputed)"
        rows.append({"term": f"student + teacher at the peak (checkpointing {'on' if checkpointing else 'off'})",
                     "measured_bytes": state, "formula_bytes": predicted["student"] + predicted["teacher"], "how": how})
        rows.append({"term": f"scoring: everything else at the peak (checkpointing {'on' if checkpointing else 'off'})",
                     "measured_bytes": profiled["peak"] - state, "formula_bytes": predicted["scoring"], "how": how})
    tokens = run.micro_rows * (run.frames + shape.codebooks - 1)  # one micro-batch's decoder positions
    for row in rows:
        row["ratio"] = row["measured_bytes"] / row["formula_bytes"]
        if row["term"].startswith("scoring"):
            row["term"] += f", per token: {row['measured_bytes'] / tokens:.0f} vs {row['formula_bytes'] / tokens:.0f}"
        if row["term"].startswith("student + teacher"):
            row["term"] += f", per parameter: {row['measured_bytes'] / n:.2f} vs {row['formula_bytes'] / n:.2f}"
    return {"shape": asdict(shape), "parameters": n, "run": asdict(run), "rows": rows,
            "profiled_by_category": {"checkpointing_on": profiles[True], "checkpointing_off": profiles[False]},
            "bytes_per_parameter_static": (measured["student"] + measured["teacher"]) / n}


def cuda_measure(name: str, workdir: Path, overrides: list[str], steps: int = 2, lora: bool = False) -> dict:
    """Peak torch.cuda.max_memory_allocated over `steps` train steps of the shape's config (random weights,
    tiny text/audio towers, a random reward embedder), the time split, and the formula for that same run;
    `lora`: rank-LORA_RANK adapters on the default targets (the formula's assumption) instead of a full finetune."""
    import gc

    shape = SHAPES[name]
    torch.cuda.reset_peak_memory_stats()
    distiller = distiller_for(shape, SHAPE_CONFIGS[name], workdir / name, "cuda",
                              [*overrides, *(LORA_OVERRIDES if lora else [])])
    static = torch.cuda.memory_allocated()
    rows = [distiller.train_step(s) for s in range(steps)]
    peak = torch.cuda.max_memory_allocated()
    phases = ("time_rollout", "time_reward", "time_teacher", "time_student")
    last = rows[-1]  # the first step also captures the rollout's CUDA graphs
    total = sum(last[k] for k in phases)
    student = distiller.student
    towers = sum(p.numel() for m in (student.text_encoder.encoder, student.codec.model) for p in m.parameters())
    embedder = sum(p.numel() for p in distiller.embedder.parameters()) if distiller.embedder is not None else 0
    # N from the shape: with LoRA the student's parameters include the adapters
    formula = estimate(shape, Run.of(distiller.config, lora=lora), decoder_parameters(shape), towers, embedder)
    result = {"shape": name, "mode": "lora" if lora else "full", "config": SHAPE_CONFIGS[name],
              "grad_accum": distiller.config.grad_accum, "peak_gb": peak / GB, "formula_peak_gb": formula["peak"] / GB,
              "static_after_load_gb": static / GB, "step_s": total,
              **{f"{k[5:]}_share": last[k] / total for k in phases}, "how": "measured-cuda"}
    del distiller, rows
    gc.collect()
    torch.cuda.empty_cache()
    return result


# ------------------------------------------------------------------------------------------- report

TARGETS_GB = {("small", "full"): 40, ("medium", "lora"): 40, ("large", "lora"): 80}


def formula_table(overrides: list[str], processes: int) -> list[dict]:
    towers, embedder = tower_parameters(), clap_parameters()
    rows = []
    for name, shape in SHAPES.items():
        config = load_config(DistillConfig, ROOT / "configs" / SHAPE_CONFIGS[name], overrides)
        n = decoder_parameters(shape)
        for mode in ("full", "lora"):
            run = Run.of(config, processes, lora=mode == "lora")
            terms = estimate(shape, run, n, towers, embedder)
            rows.append({"shape": name, "mode": mode, "config": SHAPE_CONFIGS[name], "parameters": n,
                         "processes": processes, **{k: v / GB for k, v in terms.items()},
                         "target_gb": TARGETS_GB.get((name, mode)), "how": "estimated"})
    return rows


def print_table(title: str, rows: list[dict], columns: list[str]):
    print(f"\n{title}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v)))
        print("| " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), help="GPU: shapes to measure")
    parser.add_argument("--grad-accum", type=int, default=None, help="override the configs' grad_accum")
    parser.add_argument("--processes", type=int, default=1, help="formula: processes sharing the step (DDP)")
    parser.add_argument("--lora", action="store_true", help=f"GPU: measure with rank-{LORA_RANK} LoRA adapters, not a full finetune")
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default bench/results/train_memory_<device>.json)")
    args = parser.parse_args()
    overrides = ["--grad-accum", str(args.grad_accum)] if args.grad_accum else []
    workdir = Path(tempfile.mkdtemp())
    began = time.perf_counter()
    result = {"device": args.device, "torch": torch.__version__, "created": time.strftime("%Y-%m-%d %H:%M"),
              "lora_rank_assumed": LORA_RANK}
    import transformers

    result["transformers"] = transformers.__version__
    if args.device == "cpu":
        torch.set_num_threads(2)
        result["device_name"] = platform.processor() or platform.machine()
        check = cpu_check(workdir)
        result["cpu_check"] = check
        print(f"CPU accounting check, decoder {check['shape']}, N = {check['parameters']:,}, run {check['run']}")
        print_table("measured (CPU) vs formula, bytes", check["rows"],
                    ["term", "measured_bytes", "formula_bytes", "ratio", "how"])
    else:
        result["device_name"] = torch.cuda.get_device_name()
        result["measured"] = [cuda_measure(name, workdir, overrides, lora=args.lora) for name in args.shapes]
        print_table("measured on " + result["device_name"], result["measured"],
                    ["shape", "mode", "grad_accum", "peak_gb", "formula_peak_gb", "static_after_load_gb", "step_s",
                     "rollout_share", "reward_share", "teacher_share", "student_share", "how"])
    result["formula"] = formula_table(overrides, args.processes)
    print_table(f"estimated per process (GB; shipped configs, {args.processes} process(es), LoRA rank {LORA_RANK})",
                result["formula"], ["shape", "mode", "parameters", "static", "rollout", "scoring",
                                    "optimizer", "peak", "target_gb", "how"])
    result["seconds"] = time.perf_counter() - began
    out = args.out or ROOT / "bench" / "results" / f"train_memory_{args.device}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{result['seconds']:.0f} s; saved {out}")


if __name__ == "__main__":
    main()
