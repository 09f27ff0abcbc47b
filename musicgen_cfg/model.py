"""The MusicGen bundle behind one interface: trainable LM + frozen text encoder + codec.

    model = load_model("default")                  # the embedded default (musicgen_cfg/assets/default)
    model = load_model("facebook/musicgen-small")  # real MusicGen: hub id or local dir (transformers format)
    model = load_model("runs/q")                   # a training run: its final export, else its latest checkpoint
    out = model.generate(["a joyful Irish jig"], seeds=[0], duration=8.0, sampling=SamplingConfig())
    model.save("runs/my-model")                    # same format, atomic, safetensors only

Real checkpoints (transformers' MusicgenForConditionalGeneration format; a hub id is fetched into the hub cache,
honouring HF_HUB_OFFLINE) are read tensor by tensor: the decoder's tensors become our compact `MusicgenLM`'s weights
unchanged (built on the meta device, so one decoder is ever held), and transformers builds the frozen T5 encoder and
EnCodec from their own tensors.
"""

import importlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import MusicgenDecoderConfig

from musicgen_cfg.cfg import Condition
from musicgen_cfg.checkpoint import (
    EXPORT_SHARD_BYTES,
    Checkpoint,
    atomic_directory,
    open_checkpoint,
    read_json,
    save_sharded,
    state_sha256,
    write_json,
)
from musicgen_cfg.errors import UserError
from musicgen_cfg.lm import MusicgenLM
from musicgen_cfg.run_layout import CHECKPOINT_PREFIX, checkpoints, final_export_dir
from musicgen_cfg.sampler import SamplingConfig, max_frames, sample

ASSETS = Path(__file__).resolve().parent / "assets" / "default"
DEFAULT_MODELS = {"default": "base", "default-base": "base", "default-quality": "quality", "default-diversity": "diversity"}
# Codecs a checkpoint's config.json can name (`musicgen_cfg.codec`), as "module:class". The core names
# them instead of importing them: the symbolic codec belongs to the default world (musicgen_cfg/world/),
# which the core never imports (tests/test_architecture.py); it is loaded only when a checkpoint asks.
CODECS = {"symbolic": "musicgen_cfg.world.codec:SymbolicCodec"}


@dataclass
class Generation:
    prompt: str
    seed: int
    codes: torch.Tensor  # [K, T]
    audio: np.ndarray  # float32 [N] in [-1, 1]
    sample_rate: int
    render: dict = field(default_factory=dict)


@dataclass
class MusicGen:
    lm: MusicgenLM
    text_encoder: object  # conditioning.TextEncoder
    codec: object  # a codec (codecs/)
    config: dict  # the checkpoint's config.json
    source: str
    generation_config: object | None = None  # real checkpoints: transformers GenerationConfig, saved back
    _sha: str | None = field(default=None, repr=False)

    @property
    def is_symbolic(self) -> bool:
        return is_symbolic_config(self.config)

    @property
    def max_frames(self) -> int:
        """The most frames one generation can have (sampler.max_frames of the LM)."""
        return max_frames(self.lm)

    @property
    def default_guidance_scale(self) -> float:
        """The CFG gamma this checkpoint is meant to be sampled with (the teacher gamma when it is the base):
        our config block's `guidance_scale`, else the generation config's (facebook/musicgen-*: 3), else 3."""
        recorded = self.config.get("musicgen_cfg", {}).get("guidance_scale")
        if recorded is None and self.generation_config is not None:
            recorded = getattr(self.generation_config, "guidance_scale", None)
        return float(3.0 if recorded is None else recorded)

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def to(self, device, dtype: torch.dtype | None = None) -> "MusicGen":
        """Move to `device`; `dtype` (inference) converts the LM's weights only: the text encoder and
        the codec stay float32 (T5 overflows in float16; they run once per request)."""
        self.lm.to(device, dtype)
        self.text_encoder.to(device)
        if hasattr(self.codec, "model"):
            self.codec.model.to(device)
        return self

    def weights_sha256(self, refresh: bool = False) -> str:
        """Identity of the trainable weights (LM); cached, pass refresh=True after changing them."""
        if self._sha is None or refresh:
            self._sha = state_sha256(self.lm.state_dict())
        return self._sha

    def condition(self, prompts: list[str]) -> Condition:
        return self.text_encoder.encode(list(prompts)).to(self.device)

    def num_frames(self, duration: float, prompt: str) -> int:
        return self.codec.frames_for_duration(duration, prompt)

    def generate(
        self, prompts: list[str], seeds: list[int], duration: float, sampling: SamplingConfig, max_batch: int = 64
    ) -> list[Generation]:
        """One Generation per (prompt, seed) pair, in order. Rows with the same length are batched."""
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        if not prompts:
            raise UserError("no prompts to generate")
        frames = [self.num_frames(duration, p) for p in prompts]
        results: list[Generation | None] = [None] * len(prompts)
        for length in sorted(set(frames)):
            rows = [i for i, f in enumerate(frames) if f == length]
            for start in range(0, len(rows), max_batch):
                chunk = rows[start : start + max_batch]
                chunk_prompts = [prompts[i] for i in chunk]
                codes = sample(self.lm, self.condition(chunk_prompts), length, sampling, [seeds[i] for i in chunk])
                audio = self.codec.decode(codes.cpu(), chunk_prompts).numpy()
                for j, i in enumerate(chunk):
                    results[i] = Generation(prompts[i], seeds[i], codes[j].cpu(), audio[j], self.codec.sample_rate,
                                            self.codec.render_info(prompts[i]))
        return results

    def save(self, path: str | Path, extra_config: dict | None = None, max_shard_bytes: int = EXPORT_SHARD_BYTES):
        """Write a checkpoint directory atomically (config.json + the weights [+ tokenizer files])."""
        with atomic_directory(path) as tmp:
            self.write_files(tmp, extra_config, max_shard_bytes)

    def write_files(self, directory: Path, extra_config: dict | None = None, max_shard_bytes: int = EXPORT_SHARD_BYTES):
        """The checkpoint files, into an existing (temporary) directory: the weights as model.safetensors, or as
        shards of at most max_shard_bytes + model.safetensors.index.json (checkpoint.save_sharded: written from
        the tensors themselves, so saving holds no second copy of the model)."""
        config = json.loads(json.dumps(self.config))
        if extra_config:
            config.setdefault("musicgen_cfg", {}).update(extra_config)
        state = dict(self.lm.state_dict())
        if not self.is_symbolic:  # a real checkpoint keeps its frozen towers so transformers can load it
            state.update({f"text_encoder.{k}": v for k, v in self.text_encoder.encoder.state_dict().items()})
            state.update({f"audio_encoder.{k}": v for k, v in self.codec.model.state_dict().items()})
        save_sharded(state, directory, metadata={"format": "pt"}, max_shard_bytes=max_shard_bytes)
        write_json(config, directory / "config.json")
        if not self.is_symbolic:
            self.text_encoder.tokenizer.save_pretrained(directory)
            if self.generation_config is not None:
                self.generation_config.save_pretrained(directory)


def is_symbolic_config(config: dict) -> bool:
    """Whether a checkpoint's config.json is a default-world model (symbolic codec, MiniLM text encoder)."""
    block = config.get("musicgen_cfg", {})
    return isinstance(block, dict) and block.get("codec") == "symbolic"


# The decoder sizes a symbolic checkpoint's config.json must give, each a positive int.
DECODER_SIZES = ("vocab_size", "num_codebooks", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                 "max_position_embeddings")


def check_model_config(config: dict, where) -> None:
    """A checkpoint's config.json (foreign input) has the structure loading relies on, else one UserError:
    our `musicgen_cfg` block is a mapping whose recorded teacher gamma is a finite number >= 0, and a
    symbolic model's `decoder` a mapping with positive int sizes and heads dividing the width."""
    block = config.get("musicgen_cfg", {})
    if not isinstance(block, dict):
        raise UserError(f"checkpoint {where}: config.json's 'musicgen_cfg' must be a mapping")
    gamma = block.get("guidance_scale")
    if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float))
                              or not math.isfinite(gamma) or gamma < 0):
        raise UserError(f"checkpoint {where}: its recorded guidance_scale must be a finite number >= 0, got {gamma!r}")
    if not is_symbolic_config(config):
        return
    decoder = config.get("decoder")
    if not isinstance(decoder, dict):
        raise UserError(f"checkpoint {where}: config.json has no 'decoder' mapping")
    for key in DECODER_SIZES:
        value = decoder.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"checkpoint {where}: config.json's decoder.{key} must be a positive int, got {value!r}")
    if decoder["hidden_size"] % decoder["num_attention_heads"]:
        raise UserError(f"checkpoint {where}: decoder.hidden_size {decoder['hidden_size']} is not divisible by "
                        f"num_attention_heads {decoder['num_attention_heads']}")


def looks_like_hub_id(spec: str) -> bool:
    """'owner/name' that is no local path: what transformers would look up on the hub."""
    return not Path(spec).exists() and not spec.startswith((".", "/", "~")) and spec.count("/") == 1


def pick_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu; 'cpu', 'cuda[:N]' or 'mps' when that device exists, else a user error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device {device!r} requested but no CUDA device is available")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"device {device!r} requested but only {count} CUDA device(s) exist (cuda:0..cuda:{count - 1})")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device {device!r} requested but MPS is not available")
    elif parsed.type != "cpu":
        raise UserError(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_spec(spec: str, log=None) -> str:
    """The checkpoint a model spec names: 'default', 'default-quality', ... -> the shipped directory; a training
    run directory -> its final export, else its latest checkpoint (said on stderr, or through `log`); a
    checkpoint directory or hub id -> unchanged."""
    if spec in DEFAULT_MODELS:
        path = ASSETS / DEFAULT_MODELS[spec]
        if not (path / "config.json").is_file():
            raise UserError(f"the shipped model {spec!r} is missing at {path} (rebuild: see README, 'Default model')")
        return str(path)
    path = Path(spec)
    if path.is_dir() and not (path / "config.json").is_file():
        resolved, what = run_directory_model(path)
        (log or _stderr)(f"{spec} is a training run: using {what} {resolved}")
        return str(resolved)
    return spec


def run_directory_model(run_dir: Path) -> tuple[Path, str]:
    """(checkpoint dir, 'its final export' | 'its latest checkpoint') of a `musicgen-cfg train` run directory.

    The export is where the run's run.json says (`export`, default RUN/final); a run that was stopped
    before its end has no export, so its newest checkpoint-N stands in."""
    run_json = run_dir / "run.json"
    found = checkpoints(run_dir)
    if not run_json.is_file() and not found:
        raise UserError(f"{run_dir} is neither a model checkpoint (no config.json) nor a training run "
                        f"(no run.json or {CHECKPOINT_PREFIX}* directories)")
    if run_json.is_file():
        config = read_json(run_json).get("config", {})
        export = final_export_dir(run_dir, config.get("export"))
        if (export / "config.json").is_file():
            return export, "its final export"
    if not found:
        raise UserError(f"training run {run_dir} has no export and no checkpoint yet: let it reach its first "
                        f"checkpoint or its end")
    return found[-1], "its latest checkpoint"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """--dtype NAME for `device` -> the LM's inference dtype; an unknown name or float16 on CPU is a user error."""
    cuda = str(device).startswith("cuda")
    if name == "auto":
        if not cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise UserError(f"unknown --dtype {name!r}: choose auto, {', '.join(DTYPES)}")
    if DTYPES[name] is torch.float16 and not cuda:
        raise UserError("--dtype float16 needs a CUDA device: on CPU use float32 or bfloat16")
    return DTYPES[name]


def load_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> MusicGen:
    """Load `default[-quality|-diversity]`, a checkpoint or run directory, or a hub id (real MusicGen).

    dtype: the LM's weights for inference (see MusicGen.to); None keeps them as stored (float32: training).
    """
    source = resolve_spec(spec)
    path = Path(source)
    if path.is_dir():
        config = read_json(path / "config.json", f"checkpoint {path}")
        check_model_config(config, path)
        if is_symbolic_config(config):
            return _load_symbolic(path, config, dtype).to(device, dtype)
        return _load_transformers(source, path, dtype).to(device, dtype)
    if not looks_like_hub_id(source):
        raise UserError(f"model directory not found: {source}")
    return _load_transformers(source, _hub_snapshot(source), dtype).to(device, dtype)


def codec_named(name: str):
    """An instance of the codec `name` of CODECS (a symbolic checkpoint's codec)."""
    if name not in CODECS:
        raise UserError(f"unknown codec {name!r} in the checkpoint config: choose {', '.join(CODECS)}")
    module, cls = CODECS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def _load_symbolic(path: Path, config: dict, dtype: torch.dtype | None) -> MusicGen:
    from musicgen_cfg.conditioning import minilm_text_encoder

    text_encoder = minilm_text_encoder(cache_size=4096)
    checkpoint = open_checkpoint(path, f"checkpoint {path}")  # single-file or sharded (a large merge)
    lm = _load_lm(MusicgenDecoderConfig(**config["decoder"]), text_encoder.hidden_size, checkpoint, dtype)
    return MusicGen(lm.eval(), text_encoder, codec_named(config["musicgen_cfg"]["codec"]), config, str(path))


# What a hub checkpoint needs locally: configs, safetensors weights, tokenizer files; never pickled weights.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]


def _hub_snapshot(repo_id: str) -> Path:
    """The hub checkpoint `repo_id` as a local directory (the hub cache; HF_HUB_OFFLINE: the cached copy only)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load MusicGen checkpoint {repo_id!r}: {str(err).strip().splitlines()[0]}") from None


def _load_transformers(source: str, directory: Path, dtype: torch.dtype | None) -> MusicGen:
    """A transformers-format MusicGen checkpoint in `directory` (`source`: what was asked for, as it is recorded)."""
    from transformers import AutoTokenizer, GenerationConfig, MusicgenConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING, MODEL_MAPPING

    from musicgen_cfg.codecs.encodec import EncodecCodec
    from musicgen_cfg.conditioning import TextEncoder

    checkpoint = open_checkpoint(directory, f"checkpoint {source}")  # safetensors weights, intact headers
    try:
        config = MusicgenConfig.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        try:
            generation_config = GenerationConfig.from_pretrained(directory)
        except OSError:  # none saved: what MusicgenForConditionalGeneration.from_pretrained derives from config.json
            generation_config = GenerationConfig.from_pretrained(directory, config_file_name="config.json",
                                                                 _from_model_config=True)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot load MusicGen checkpoint {source!r}: {str(err).strip().splitlines()[0]}") from None
    text = config.text_encoder
    lm = _load_lm(config.decoder, text.d_model if hasattr(text, "d_model") else text.hidden_size, checkpoint, dtype)
    # The frozen towers are built and loaded by transformers from their own tensors, so its key conversions (EnCodec's
    # legacy weight_g / weight_v) and T5's tied embeddings apply exactly as in its MusicgenForConditionalGeneration.
    text_model = _transformers_tower(MODEL_FOR_TEXT_ENCODING_MAPPING, config.text_encoder, checkpoint, "text_encoder.")
    audio_model = _transformers_tower(MODEL_MAPPING, config.audio_encoder, checkpoint, "audio_encoder.")
    # The config as MusicgenForConditionalGeneration.from_pretrained leaves it (what write_files saves): each part
    # records the dtype it was loaded in (the decoder's: as stored), and the whole the name it was loaded by.
    config.text_encoder.dtype, config.audio_encoder.dtype = text_model.dtype, audio_model.dtype
    config.decoder.dtype = checkpoint.tensors[next(iter(lm.state_dict()))].dtype
    config._name_or_path = source
    text_encoder = TextEncoder(text_model, tokenizer, name=source)
    return MusicGen(lm.eval(), text_encoder, EncodecCodec(audio_model), config.to_dict(), source, generation_config)


def _transformers_tower(mapping, config, checkpoint: Checkpoint, prefix: str):
    """The transformers model of `config` (its class from `mapping`) from the checkpoint's tensors under `prefix`,
    each read and finite-checked by Checkpoint.read."""
    state = {name[len(prefix):]: checkpoint.read(name) for name in checkpoint.tensors if name.startswith(prefix)}
    return mapping[type(config)].from_pretrained(None, config=config, state_dict=state)


TOWER_PREFIXES = ("text_encoder.", "audio_encoder.")  # a real checkpoint's frozen towers, beside the decoder


def _load_lm(config: MusicgenDecoderConfig, text_hidden_size: int, checkpoint: Checkpoint,
             dtype: torch.dtype | None) -> MusicgenLM:
    """Our LM made of the checkpoint's decoder tensors (names and shapes checked from the headers first), each read
    (finite-checked) and cast to `dtype` (None: the LM's float32) on its own: an LM built on the meta device takes
    them as its weights (MusicgenLM.on_meta), so memory holds one decoder and at most one more tensor."""
    lm = MusicgenLM.on_meta(config, text_hidden_size)
    expected = lm.state_dict()
    _check_lm_tensors({name: t.shape for name, t in expected.items()},
                      {name: info.shape for name, info in checkpoint.tensors.items()}, checkpoint.label)
    lm.load_state_dict({name: checkpoint.read(name).to(dtype or like.dtype) for name, like in expected.items()},
                       assign=True)
    return lm


def _check_lm_tensors(expected: dict[str, tuple], found: dict[str, tuple], label: str) -> None:
    """The tensors `found` (name -> shape) are exactly the LM's `expected` ones (besides a real checkpoint's towers)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in set(found) - set(expected) if not k.startswith(TOWER_PREFIXES))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UserError(f"{label} does not match the model config: {'missing' if missing else 'unexpected'} tensor {first}")
    for name, shape in expected.items():
        if tuple(found[name]) != tuple(shape):
            raise UserError(f"{label}: tensor {name} has shape {list(found[name])}, config expects {list(shape)}")


def load_lm_state(lm: MusicgenLM, state: dict[str, torch.Tensor], where) -> None:
    """Copy an in-memory state dict into an existing LM (a resumed run's weights), checked like a load."""
    expected = lm.state_dict()
    _check_lm_tensors({k: t.shape for k, t in expected.items()}, {k: t.shape for k, t in state.items()},
                      f"checkpoint {where}")
    lm.load_state_dict({k: state[k] for k in expected})
