"""Hub-ready model directories: what `train` exports (RUN/final) and what `merge` writes.

    musicgen-cfg train --config configs/musicgen_small_quality.yaml --out runs/q    # -> runs/q/final
    musicgen-cfg merge --models runs/q runs/d --lam 0.5 --out runs/merged          # same layout

A real-MusicGen directory loads with plain transformers (`MusicgenForConditionalGeneration`,
`AutoProcessor`, `pipeline("text-to-audio")`) and holds:
- model.safetensors: every tower (decoder, T5, EnCodec), safetensors only; above 2 GiB (EXPORT_SHARD_BYTES)
  model-0000k-of-0000n.safetensors shards + model.safetensors.index.json, as transformers shards;
- config.json, with our provenance block `musicgen_cfg` (base, beta, lambda, teacher gamma, training);
- generation_config.json with `guidance_scale` 1 (a distilled model samples without CFG; the base's
  3 would make transformers' generate() guide it a second time, at twice the cost), and the teacher
  gamma, beta and lambda under the `musicgen_cfg` key;
- the base's tokenizer, and a processor (processor_config.json: EncodecFeatureExtractor at the
  codec's rate and channels, as in facebook/musicgen-*), so AutoProcessor works;
- README.md, a model card (base, method, beta, lambda, teacher gamma, steps, data, metrics when known,
  and the licence of the base weights: CC-BY-NC-4.0 for facebook/musicgen-*);
- manifest.json (exports: the training run and file hashes), never optimizer or trainer state.
Default-world (symbolic codec) directories have the same files except the transformers-only ones.
"""

from pathlib import Path

from musicgen_cfg.checkpoint import (
    EXPORT_SHARD_BYTES,
    atomic_directory,
    read_json,
    weight_file_hashes,
    write_json,
)

PROJECT_KEY = "musicgen_cfg"
GENERATION_CONFIG = "generation_config.json"
MODEL_CARD = "README.md"
# Files of a training checkpoint that resume a run; a model directory for others to use has none.
TRAINING_STATE_FILES = frozenset({"optimizer.safetensors", "trainer_state.json"})
# The provenance a generation config carries under PROJECT_KEY (transformers keeps unknown keys).
GENERATION_PROVENANCE = ("teacher_guidance_scale", "beta", "lambda", "base_model")
LICENCES = {  # base model prefix -> (model card `license:` tag, what to say)
    "facebook/musicgen": ("cc-by-nc-4.0", "CC-BY-NC-4.0, inherited from the base weights (facebook/musicgen-*): "
                                          "non-commercial use only"),
    "default": ("mit", "MIT: the default model was trained by this project on public-domain scores (music21)"),
}


def machine(device: str, threads: int, processes: int = 1) -> dict:
    """Where a model was trained, for its manifest: device, processes x threads, torch / transformers versions."""
    import os
    import platform

    import torch
    import transformers

    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return {"device": name, "processes": processes, "threads": threads, "torch": torch.__version__,
            "transformers": transformers.__version__}


def export_model(model, out_dir: str | Path, provenance: dict, manifest: dict | None = None,
                 metrics: dict | None = None, max_shard_bytes: int = EXPORT_SHARD_BYTES) -> Path:
    """Write `model` (a model.MusicGen) to `out_dir` atomically as a hub-ready directory; returns it.

    `provenance` goes into config.json's musicgen_cfg block (beta, teacher_guidance_scale, base_model,
    base_sha256, training, ...); `manifest` (how it was made) into manifest.json with the weights'
    hashes; `metrics` (name -> value, e.g. the last held-out KL) into the model card. Weights larger than
    max_shard_bytes are sharded (transformers' model.safetensors.index.json)."""
    with atomic_directory(out_dir) as tmp:
        block = {**provenance, "license": licence(provenance.get("base_model"))[0]}
        model.write_files(tmp, block, max_shard_bytes)
        write_hub_files(tmp, metrics)
        if manifest is not None:
            write_json({**manifest, **block, "weights_sha256": model.weights_sha256(refresh=True),
                        **weight_file_hashes(tmp)}, tmp / "manifest.json")
    return Path(out_dir)


def write_hub_files(directory: Path, metrics: dict | None = None) -> None:
    """Generation config, processor and model card for the checkpoint (config.json + weights) in `directory`."""
    config = read_json(directory / "config.json")
    block = config.get(PROJECT_KEY) or {}
    if config.get("model_type") == "musicgen":  # transformers' full MusicGen (the default world has no towers)
        write_generation_config(directory, block)
        write_processor(directory, config)
    (directory / MODEL_CARD).write_text(model_card(config, metrics))


def write_generation_config(directory: Path, block: dict) -> None:
    """generation_config.json: the base's (when present), with guidance_scale 1 and our provenance key."""
    from transformers import GenerationConfig

    path = directory / GENERATION_CONFIG
    generation = GenerationConfig.from_pretrained(directory) if path.is_file() else GenerationConfig()
    generation.guidance_scale = 1.0
    setattr(generation, PROJECT_KEY, {key: block.get(key) for key in GENERATION_PROVENANCE})
    generation.save_pretrained(directory)


def write_processor(directory: Path, config: dict) -> None:
    """processor_config.json (+ the tokenizer already in `directory`): what AutoProcessor loads.

    The feature extractor is EnCodec's at the codec's sampling rate and channel count, which is
    exactly the preprocessor of facebook/musicgen-* (feature_size = channels, padding 0)."""
    from transformers import AutoTokenizer, EncodecFeatureExtractor, MusicgenProcessor

    audio = config["audio_encoder"]
    extractor = EncodecFeatureExtractor(feature_size=audio.get("audio_channels", 1),
                                        sampling_rate=audio["sampling_rate"])
    MusicgenProcessor(feature_extractor=extractor, tokenizer=AutoTokenizer.from_pretrained(directory)).save_pretrained(
        directory)


def licence(base_model: str | None) -> tuple[str, str]:
    """(model card licence tag, sentence) of weights finetuned from `base_model`; a local base that is itself
    an export or merge passes on the licence it recorded."""
    for prefix, value in LICENCES.items():
        if base_model and str(base_model).startswith(prefix):
            return value
    config = Path(str(base_model)) / "config.json"
    recorded = (read_json(config).get(PROJECT_KEY) or {}).get("license") if base_model and config.is_file() else None
    if recorded:
        return recorded, f"{recorded}, as recorded by the base model {base_model}"
    return "other", f"The licence of the base weights ({base_model}) applies: check it before you share or use this model"


def model_card(config: dict, metrics: dict | None = None) -> str:
    """README.md of a model directory: YAML front matter for the hub, then what the model is and how it was made."""
    block = config.get(PROJECT_KEY) or {}
    base = block.get("base_model")
    tag, licence_text = licence(base)
    if block.get("license") and block["license"] != tag:  # a merge of exports keeps their recorded licence
        tag, licence_text = block["license"], f"{block['license']}, as recorded by the merged models"
    merge = block.get("merge")
    symbolic = block.get("codec") == "symbolic"
    front = ["---", f"license: {tag}", "tags: [text-to-audio, musicgen, cfg-distillation, musicgen-cfg]"]
    if not symbolic:
        front += ["library_name: transformers", "pipeline_tag: text-to-audio"]
    if base and not symbolic and not Path(str(base)).exists():
        front.append(f"base_model: {base}")
    front.append("---")
    beta, lam, gamma = block.get("beta"), block.get("lambda"), block.get("teacher_guidance_scale")
    training = block.get("training") or {}
    if merge:
        method = (f"a {merge.get('method')} weight merge at lambda = {lam} of models distilled from the same base "
                  f"(lambda = 0: the first, the quality model; 1: the second, the diversity model)")
    else:
        method = (f"CFG distillation{' with a diversity reward' if beta else ''}: finetuned without CFG to match the "
                  f"base model's CFG distribution at gamma = {gamma}")
    rows = [("base model", base), ("method", method), ("beta (diversity reward weight)", beta),
            ("lambda (merge weight)", lam), ("teacher CFG gamma", gamma),
            ("training steps", training.get("steps")), ("training prompts", training.get("prompts")),
            ("sequences per step", training.get("prompts_per_step") and
             f"{training['prompts_per_step']} prompts x {training.get('generations')} generations"),
            ("reward embedder", training.get("embedder") if beta else None)]
    no_cfg = ("sample it with gamma 1, the default of `musicgen-cfg generate`" if symbolic else
              "`generation_config.json` sets `guidance_scale` to 1")
    lines = [*front, "", "# MusicGen, CFG-distilled (musicgen-cfg)", "",
             "Diversity-rewarded CFG distillation (Cideron et al., ICLR 2025) of a MusicGen model: it samples "
             f"**without classifier-free guidance** (one forward pass per step), so {no_cfg}.", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows if value is not None]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items())]]
    else:
        lines.append("Not measured here: `musicgen-cfg generate` then `musicgen-cfg evaluate` measure quality, "
                     "diversity and cost.")
    lines += ["", "## Use", ""]
    if symbolic:
        lines += ["```bash", "musicgen-cfg generate --model THIS_DIR --prompt \"a joyful Irish jig on the fiddle\" "
                  "--num-samples 4 --out outputs/jig", "```"]
    else:
        lines += ["```python", "from transformers import pipeline", "",
                  "music = pipeline(\"text-to-audio\", model=\"THIS_DIR\")",
                  "out = music(\"lo-fi beat with a mellow piano\", forward_params={\"do_sample\": True, "
                  "\"max_new_tokens\": 256})", "```"]
    lines += ["", "## Licence", "", licence_text + ".", ""]
    return "\n".join(lines)
