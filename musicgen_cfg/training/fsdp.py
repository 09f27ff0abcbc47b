"""FSDP2 through accelerate, for full finetunes whose AdamW state does not fit one GPU (musicgen-large).

    accelerate launch --num_processes 8 -m musicgen_cfg.cli train --config configs/musicgen_medium_quality.yaml \
        --model facebook/musicgen-large --fsdp true

With `fsdp: true` the student's weights, gradients and AdamW moments are sharded over the W
processes (16N/W bytes each between passes instead of 16N); the frozen teacher stays a full copy
on every process. The student is ONE FSDP unit: `MusicgenLM.forward` computes every layer's
cross-attention keys and values before the layers run, so per-layer units would read weights of
units not yet gathered. Each forward/backward therefore all-gathers the full weights (4N bytes)
for its duration, which still fits musicgen-large (N = 3.3B: 13 GB fp32) on an 80 GB GPU.

- Rollouts and held-out sampling call the sampler's cached `step`, not `forward`, which FSDP's
  hooks never see: they run inside `full_parameters`, which gathers the weights and reshards after.
- Checkpoints and the export hold the FULL state dict (weights and optimizer moments gathered),
  in the same files as a single-process run, so a run resumes under any process layout.
- Refused with one line: `fsdp` with `lora` (the adapters and their optimizer state are small
  and the frozen base is shared with the teacher: plain DDP is the right tool), `fsdp` on one
  process, and a launch that turns on accelerate's own FSDP (`accelerate launch --use_fsdp`).

accelerate selects FSDP only for accelerator devices; its FSDP2 path works on CPU processes
(gloo) as well, and `configure` selects it there too, which is how tests/training/test_distributed.py runs it.
"""

from contextlib import contextmanager

import torch

from musicgen_cfg.errors import UserError


def plugin():
    """accelerate's FSDP2 plugin: one unit (no auto-wrap), full state dicts."""
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="no_wrap",
                                          state_dict_type="FULL_STATE_DICT", reshard_after_forward=True)


def configure(accelerator, fsdp_plugin) -> None:
    """With `fsdp_plugin` (fsdp: true), make `accelerator` prepare models with FSDP2, also on CPU
    processes. Without it, refuse a launch that turned accelerate's own FSDP on (its wrapping and
    FSDP1 would break sampling and saving). Either mismatch is one UserError."""
    from accelerate.utils import DistributedType

    if fsdp_plugin is None:
        if accelerator.distributed_type == DistributedType.FSDP:
            raise UserError("this launch turns on accelerate's own FSDP (accelerate launch --use_fsdp or an "
                            "accelerate config with FSDP): launch without it and set fsdp: true instead")
        return
    if accelerator.num_processes < 2:
        raise UserError("fsdp: true shards over processes and this run has one: launch 2 or more "
                        "(accelerate launch --num_processes N ...) or set fsdp: false")
    if accelerator.distributed_type == DistributedType.MULTI_CPU:  # what accelerate does on GPUs, done here
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp_plugin
    if not accelerator.is_fsdp2:
        raise UserError(f"fsdp: true, but accelerate runs this launch as {accelerator.distributed_type.value}; "
                        "launch with accelerate launch (or torchrun) on CUDA or CPU processes")


def is_sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextmanager
def full_parameters(module: torch.nn.Module):
    """Collective: inside, an FSDP2 module holds its full, plain weights (all-gathered); resharded after.

    Forward passes inside need no further collective. A no-op for a module that is not sharded (so
    callers need not branch) and inside an enclosing `full_parameters` (the outer one reshards)."""
    from torch.distributed.tensor import DTensor

    if not is_sharded(module) or not isinstance(next(module.parameters()), DTensor):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_optimizer_state(module: torch.nn.Module, optimizer) -> dict[str, torch.Tensor]:
    """Collective: the AdamW state gathered from the shards, as student_weights.optimizer_tensors names it
    (`<parameter>::<key>`); complete on the main process, empty elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=True)).get("state", {})
    return {f"{name}::{key}": value if torch.is_tensor(value) else torch.tensor(value)
            for name, entries in state.items() for key, value in entries.items()}


def gathered_model(model):
    """Collective: on the main process a plain MusicGen with the full student weights on CPU (what a
    checkpoint or the export writes), None elsewhere."""
    import dataclasses

    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from musicgen_cfg.lm import MusicgenLM

    state = get_model_state_dict(model.lm, options=_options(cpu_offload=True))
    if not state:
        return None
    lm = MusicgenLM.on_meta(model.lm.config, model.lm.text_hidden_size)  # the gathered tensors become the weights
    lm.load_state_dict(state, assign=True)
    return dataclasses.replace(model, lm=lm.eval(), _sha=None)


def load_full_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], where) -> None:
    """Collective: shard a checkpoint's full weights (every process read the same file) into `module`."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    expected = {name: tuple(p.shape) for name, p in module.named_parameters()}  # DTensors: the global shape
    for name, shape in expected.items():
        if name not in weights:
            raise UserError(f"checkpoint {where} does not match the model config: missing tensor {name}")
        if tuple(weights[name].shape) != shape:
            raise UserError(f"checkpoint {where}: tensor {name} has shape {list(weights[name].shape)}, "
                            f"config expects {list(shape)}")
    set_model_state_dict(module, {name: weights[name] for name in expected}, options=_options())


def load_full_optimizer(module: torch.nn.Module, optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Collective: shard a full flat optimizer state (`<parameter>::<key>`) into the optimizer."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state: dict[str, dict[str, torch.Tensor]] = {}
    for flat_name, value in flat.items():
        name, key = flat_name.split("::", 1)
        state.setdefault(name, {})[key] = value
    groups = get_optimizer_state_dict(module, optimizer, options=_options())["param_groups"]
    set_optimizer_state_dict(module, optimizer, {"state": state, "param_groups": groups}, options=_options())
