"""The plan of the real-shape rehearsal (bench/real_shape.py): the published MusicGen sizes, the stages, the memory
formula's prediction of each stage, where each stage runs on a machine's RAM, and which checkpoints each size needs.

    .venv/bin/python bench/real_shape.py --preset large     # the rehearsal that follows this plan (make real-shape)

The prediction of a stage is the largest of its terms (bytes; N decoder parameters, W = 4 N, Tw = 4 x the T5
encoder and EnCodec parameters; KV cache and fused copies: train_memory.kv_cache and fused_copies, fp32):
  build       W + Tw                     transformers' model (save_pretrained writes from its tensors)
  load        W + Tw                     model.load_model: the checkpoint's tensors become the weights (one decoder)
  generate    load; sample W + Tw + KV cache (2 rows) + fused copies
  train_*     load; step: train_memory.estimate's peak for the same shapes and run
  export      load; write W + Tw         save_file writes every shard from the model's own tensors
  merge       MAX_SHARD_BYTES + 3 x the largest tensor (one output shard, two inputs and their merge)
  app         endpoints 3 W + 2 Tw       Engine.load: both endpoints loaded, LiveMerge's copy of the served weights
                                         (theta_d is the diversity model's own LM)
              serve 3 W + Tw + KV cache (1 row) + fused copies
Loaded weights are views of the checkpoint files (safetensors maps them): file-backed pages, which RSS counts.
A stage fits when its prediction (and its preset's build) plus the runtime (this process's RSS and a probe child's
peak RSS after the imports) stays within --ram-gb (default this machine's RAM). One that does not is recorded as
"does not fit in N GB" with its prediction, and runs at the largest published size below that fits (its row says
`instead_of`).
"""

import functools
from dataclasses import dataclass
from pathlib import Path

from bench.train_memory import (
    CHECK_SHAPE,
    SHAPE_CONFIGS,
    SHAPES,
    Run,
    decoder_parameters,
    estimate,
    fused_copies,
    kv_cache,
    tower_parameters,
)

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("build", "generate", "train_full", "train_lora", "export", "merge", "app")
SIZES = ("small", "medium", "large")  # the published ones, smallest first: where a stage that does not fit goes
PRESETS = {"tiny": CHECK_SHAPE, **{name: SHAPES[name] for name in SIZES}}
ENDPOINTS = ("quality", "diversity")  # the checkpoints of seed 0 and 1
STAGE_SIZE = {"merge": "small"}  # the largest published size a stage is asked for (issue 22: two small exports)
ENDPOINTS_READ = {"merge": ENDPOINTS, "app": ENDPOINTS}  # the other stages read the quality endpoint only
DURATION_S = 2.0
TRAIN_CONFIGS = {"train_full": None, "train_lora": "musicgen_large_lora.yaml"}  # None: SHAPE_CONFIGS[preset]
TRAIN_OVERRIDES = ["--prompts-per-step", "2", "--generations", "3", "--num-frames", "50", "--grad-accum", "2",
                   "--heldout-prompts", "1"]


def checkpoint_sizes(preset: str) -> dict:
    """tiny.musicgen_config / save_tiny_musicgen keywords of a preset."""
    from musicgen_cfg.tiny import ENCODEC_32KHZ, T5_BASE

    shape = PRESETS[preset]
    sizes = dict(hidden_size=shape.hidden, num_layers=shape.layers, num_heads=shape.heads, ffn_dim=shape.ffn,
                 vocab_size=shape.vocab, num_codebooks=shape.codebooks, text_hidden_size=shape.text_hidden)
    return sizes if preset == "tiny" else {**sizes, "text": T5_BASE, "audio": ENCODEC_32KHZ}


@dataclass(frozen=True)
class Layout:
    decoder: int  # N
    towers: int  # T5 encoder + EnCodec parameters
    largest_tensor_bytes: int
    frame_rate: int


@functools.cache
def layout(preset: str) -> Layout:
    """The preset's parameter counts and largest checkpoint tensor, from its config on the meta device."""
    import torch
    from transformers import MusicgenForConditionalGeneration

    from musicgen_cfg.tiny import musicgen_config

    config = musicgen_config(**checkpoint_sizes(preset))
    with torch.device("meta"):
        state = MusicgenForConditionalGeneration(config).state_dict()
    return Layout(decoder_parameters(PRESETS[preset]), tower_parameters(config),
                  max(t.numel() * t.element_size() for t in state.values()), config.audio_encoder.frame_rate)


def train_config(stage: str, preset: str) -> str:
    """The configs/ file of a train stage (run with TRAIN_OVERRIDES)."""
    return TRAIN_CONFIGS[stage] or SHAPE_CONFIGS.get(preset, "musicgen_small_diversity.yaml")


def predicted(stage: str, preset: str) -> dict[str, float]:
    """The stage's prediction in bytes by term (module docstring)."""
    shape, lay = PRESETS[preset], layout(preset)
    W, Tw = 4 * lay.decoder, 4 * lay.towers
    steps = round(DURATION_S * lay.frame_rate) + shape.codebooks - 1

    def request(rows):  # the sampler's per-request memory in fp32
        return fused_copies(shape, 4, 4) + kv_cache(shape, rows, steps, Run.text_tokens, 4)

    load = W + Tw
    if stage == "build":
        return {"model": W + Tw}
    if stage == "generate":
        return {"load": load, "sample": W + Tw + request(2)}
    if stage in TRAIN_CONFIGS:
        return {"load": load, "step": train_estimate(stage, preset)["peak"]}
    if stage == "export":
        return {"load": load, "write": W + Tw}
    if stage == "merge":
        from musicgen_cfg.checkpoint import MAX_SHARD_BYTES

        return {"stream": MAX_SHARD_BYTES + 3 * lay.largest_tensor_bytes}
    return {"endpoints": 3 * W + 2 * Tw, "serve": 3 * W + Tw + request(1)}  # app


def train_estimate(stage: str, preset: str) -> dict[str, float]:
    """train_memory.estimate for the train stage's run (its config and overrides), the preset's towers and the
    contrastive reward embedder the stage uses."""
    from musicgen_cfg.config import load_config
    from musicgen_cfg.training.distillation import DistillConfig
    from rl.embedders import ContrastiveMusicEmbedder

    config = load_config(DistillConfig, ROOT / "configs" / train_config(stage, preset), TRAIN_OVERRIDES)
    embedder = sum(p.numel() for p in ContrastiveMusicEmbedder().parameters())
    lay = layout(preset)
    return estimate(PRESETS[preset], Run.of(config, lora=config.lora is not None), lay.decoder, lay.towers, embedder)


def asked_size(stage: str, preset: str) -> str:
    """The preset a stage is asked to run at: `preset`, capped by STAGE_SIZE (tiny stays tiny)."""
    cap = STAGE_SIZE.get(stage)
    if preset == "tiny" or cap is None:
        return preset
    return SIZES[min(SIZES.index(preset), SIZES.index(cap))]


def checkpoints_needed(plan: list[tuple[str, str | None]]) -> dict[str, tuple[str, ...]]:
    """preset -> the endpoints that the plan's (stage, where) pairs read there; a plan of builds alone builds both."""
    needed = {}
    for stage, where in plan:
        if where is not None and stage != "build":
            needed[where] = tuple(n for n in ENDPOINTS
                                  if n in needed.get(where, ()) or n in ENDPOINTS_READ.get(stage, ENDPOINTS[:1]))
    return {where: needed.get(where, ENDPOINTS) for _, where in plan if where is not None}


def placement(stage: str, preset: str, ram_bytes: float, runtime_bytes: float) -> str | None:
    """Where the stage runs: `preset` when it and the preset's build fit, else the largest published size below
    `preset` that fits (None: none does)."""
    def fits(where):
        return all(max(predicted(s, where).values()) + runtime_bytes <= ram_bytes for s in {stage, "build"})

    below = [] if preset == "tiny" else list(reversed(SIZES[:SIZES.index(preset)]))
    return next((where for where in (preset, *below) if fits(where)), None)
