"""LoRA students through peft: low-rank adapters on the student's decoder, the frozen base as the teacher.

    musicgen-cfg train --config configs/musicgen_large_lora.yaml            # a `lora:` section turns it on
    musicgen-cfg train --config configs/quality.yaml --lora.rank 8 --export runs/q   # or an override

With a `lora` section the student is the base model plus adapters W + (alpha / r) B A on the
target Linear layers of `MusicgenLM` (injected in place by peft); only A and B train. Hence:

- the teacher is the base itself: `add_adapters` returns a second module tree over the SAME frozen
  tensors, without the adapter layers (one weight copy, nothing loaded twice). It computes what
  peft's disabled adapters compute, with no mode flag to forget (tests/training/test_lora.py proves both
  equal to a separately loaded frozen model);
- checkpoints hold the adapter only, in peft's format (adapter_model.safetensors +
  adapter_config.json), next to its optimizer state;
- `export` writes merged full weights W + (alpha / r) B A: a plain checkpoint that
  `MusicgenForConditionalGeneration.from_pretrained` loads; `lora.export_adapter` also writes the
  adapter, which `peft.PeftModel.from_pretrained` applies to the transformers base model (our
  parameter names are transformers' names);
- two LoRA students merge exactly in weight space by merging their exports with
  `musicgen-cfg merge` (merging/merge.py): lerp(base + dA, base + dB, lam) = base + (1 - lam) dA +
  lam dB. peft's `add_weighted_adapter(..., "linear")` mixes the A and B factors separately, and
  (sum w_i B_i)(sum w_i A_i) is not the lerp of the deltas B_i A_i.
"""

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from musicgen_cfg.checkpoint import (
    atomic_directory,
    file_sha256,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from musicgen_cfg.config import field
from musicgen_cfg.errors import UserError

ADAPTER = "default"  # peft's adapter name inside the module; never written to files
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's file names, so peft reads our adapters
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # peft's key prefix: PeftModel -> LoraModel -> the model
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class LoraSettings:
    rank: int = field(16, "adapter rank r", min=1)
    alpha: float = field(32.0, "adapter scale numerator: the update is (alpha / r) B A", gt=0.0)
    dropout: float = field(0.0, "dropout on the adapters' input in the student's scoring pass (rollouts and the teacher never drop)",
                           min=0.0, lt=1.0)
    target_modules: tuple[str, ...] = field(
        DEFAULT_TARGETS, "Linear layers that get adapters, by name or name suffix: q_proj k_proj v_proj out_proj "
        "(self_attn and encoder_attn), fc1, fc2, lm_heads.0..K-1, enc_to_dec_proj")
    export_adapter: str | None = field(None, "also write the trained adapter (peft format) to this directory at export")

    def __post_init__(self):
        if not self.target_modules:
            raise UserError("lora.target_modules is empty: name at least one Linear layer (e.g. q_proj)")
        for name in self.target_modules:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", name):
                raise UserError(f"lora.target_modules: {name!r} is not a module name")

    def peft_config(self, base_model: str):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), bias="none", base_model_name_or_path=base_model)


def add_adapters(model, settings: LoraSettings, base_dtype: torch.dtype = torch.float32):
    """Inject adapters into `model.lm` in place (everything else is frozen) and return the teacher.

    The teacher is a MusicGen (same text encoder and codec) whose lm is a plain MusicgenLM over the
    very tensors the adapters sit on: the base model, adapters absent. `base_dtype` is the dtype
    that frozen base is held in (bfloat16 halves it for student and teacher alike); the adapters,
    which train, are float32 whatever it is.
    """
    from peft.tuners.lora import LoraModel

    model.lm.to(base_dtype)
    try:
        LoraModel(model.lm, settings.peft_config(base_model=model.source), ADAPTER)
    except ValueError as err:  # peft: a target matches no module, or a non-Linear one
        raise UserError(f"lora.target_modules {list(settings.target_modules)}: {str(err).splitlines()[0]}") from None
    for _, layer in _lora_layers(model.lm):  # peft gives the adapters the base layer's dtype
        layer.lora_A.float()
        layer.lora_B.float()
    return dataclasses.replace(model, lm=_without_adapters(model.lm).eval(), _sha=None)


def merged_model(model, base=None):
    """A plain MusicGen holding W + (alpha / r) B A in every adapted layer: what `export` writes and
    transformers loads. The W and the unadapted tensors are `base`'s (the base model as loaded, when
    the frozen base under the adapters is held in a lower precision), else shared with `model`."""
    lm = base.lm if base is not None else _without_adapters(model.lm)
    with torch.no_grad():
        for name, module in _lora_layers(model.lm):
            weight = lm.get_submodule(name).weight
            merged = weight + module.get_delta_weight(ADAPTER).to(weight.device, weight.dtype)
            lm.get_submodule(name).weight = torch.nn.Parameter(merged, requires_grad=False)
    return dataclasses.replace(base if base is not None else model, lm=lm, _sha=None)


def _without_adapters(lm: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree over the same tensors, each adapted layer replaced by its base layer."""
    tree = copy.deepcopy(lm, memo={id(t): t for t in [*lm.parameters(), *lm.buffers()]})
    for name, module in _lora_layers(tree):
        parent, _, child = name.rpartition(".")
        setattr(tree.get_submodule(parent), child, module.base_layer)
    del tree.peft_config  # set by peft on the adapted model; the base has none
    return tree


def _lora_layers(lm: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in lm.named_modules() if isinstance(module, LoraLayer)]


def set_dropout(lm: torch.nn.Module, active: bool) -> None:
    """Switch the adapters' dropout on or off without touching the base model's mode (it stays in eval)."""
    for _, module in _lora_layers(lm):
        module.lora_dropout[ADAPTER].train(active)


def adapter_state(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under peft's file names (`base_model.model.<module>.lora_A.weight`)."""
    from peft import get_peft_model_state_dict

    return {PEFT_PREFIX + k: v for k, v in get_peft_model_state_dict(lm, adapter_name=ADAPTER).items()}


def write_adapter(lm: torch.nn.Module, directory: Path) -> None:
    """adapter_model.safetensors + adapter_config.json (naming the base model) into an existing (temporary) directory."""
    save_tensors(adapter_state(lm), directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    lm.peft_config[ADAPTER].save_pretrained(str(directory))


def export_adapter(lm: torch.nn.Module, directory: str | Path, manifest: dict) -> None:
    """Atomically write the adapter directory (peft format) with a manifest.json of its provenance."""
    with atomic_directory(directory) as tmp:
        write_adapter(lm, tmp)
        write_json({**manifest, "adapter_safetensors_sha256": file_sha256(tmp / ADAPTER_WEIGHTS)}, tmp / "manifest.json")


def load_adapter(lm: torch.nn.Module, directory: Path) -> None:
    """Load a checkpoint's adapter into `lm`; a different rank, alpha or target set is one UserError."""
    from peft import set_peft_model_state_dict

    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file():
        raise UserError(f"{directory} holds no LoRA adapter ({ADAPTER_CONFIG} missing): it was not trained with a "
                        "lora section; resume it without one")
    saved, ours = read_json(directory / ADAPTER_CONFIG), lm.peft_config[ADAPTER]
    for key, mine in (("r", ours.r), ("lora_alpha", ours.lora_alpha), ("target_modules", sorted(ours.target_modules))):
        theirs = sorted(saved.get(key) or []) if key == "target_modules" else saved.get(key)
        if theirs != mine:
            raise UserError(f"adapter in {directory} has {key} {theirs}, the config asks for {mine}")
    state, expected = load_tensors(directory / ADAPTER_WEIGHTS, device=str(next(lm.parameters()).device)), adapter_state(lm)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"adapter in {directory} does not fit the model: "
                        f"{'missing' if missing else 'unexpected'} tensor {(missing or unexpected)[0]}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise UserError(f"adapter in {directory}: tensor {name} has shape {list(state[name].shape)}, "
                            f"the model expects {list(tensor.shape)}")
    set_peft_model_state_dict(lm, {k[len(PEFT_PREFIX):]: v for k, v in state.items()}, adapter_name=ADAPTER)
