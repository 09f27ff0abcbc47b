"""What of a student trains and how its checkpoints and export hold it: one strategy per kind of run, chosen
once from the train config by `student_weights` (library module of `musicgen-cfg train` and `pretrain`).

    StudentWeights  the full finetune: every LM weight trains; a checkpoint holds the model files (config.json +
                    model.safetensors); the base of the other two, which change what differs
    LoraWeights     peft adapters train (training/lora.py); a checkpoint holds the adapter only, the export merges it
    ShardedWeights  FSDP2 shards the weights (training/fsdp.py); checkpoint and export hold the gathered full state

Each owns the trainable parameters, the optimizer's flat state (`<parameter>::<key>` tensors of
optimizer.safetensors), the checkpoint's weight files (`write` / `read`), the frozen teacher and the
exported model. training/run.py's save_checkpoint / load_checkpoint take one of them: the files of all
three are those a single-process run writes, so a run resumes under any process layout.
"""

import copy
import dataclasses
from pathlib import Path

import torch

from musicgen_cfg.checkpoint import load_state
from musicgen_cfg.errors import UserError
from musicgen_cfg.training import fsdp, lora

TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # a train config's teacher_dtype


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors named after the parameters (safetensors has no nesting)."""
    flat = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                flat[f"{names[id(param)]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat


def restore_optimizer(optimizer: torch.optim.Optimizer, names: dict[int, str], flat: dict[str, torch.Tensor]):
    """The inverse of `optimizer_tensors`: each parameter's entries back into the optimizer's state."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            prefix = f"{names[id(param)]}::"
            state = {k[len(prefix):]: v.to(param.device) for k, v in flat.items() if k.startswith(prefix)}
            if state:
                optimizer.state[param] = state


def frozen_teacher(student, dtype: torch.dtype):
    """The frozen CFG teacher: a copy of the student's (initial) LM in `dtype`, no grad, eval mode.

    It shares the student's text encoder and codec (frozen in both roles): one copy of those towers.
    Each weight is cast on its own, so no transient full-precision copy of the LM is made on the device.
    """
    cast = {id(p): torch.nn.Parameter(p.detach().to(dtype, copy=True), requires_grad=False)
            for p in student.lm.parameters()}
    lm = copy.deepcopy(student.lm, memo=cast).eval()
    return dataclasses.replace(student, lm=lm, _sha=None)


def refuse_adapter_only(directory: Path) -> None:
    """A checkpoint written by a LoRA run (its adapter only) resumed as a full finetune: one UserError."""
    if (directory / lora.ADAPTER_CONFIG).is_file():
        raise UserError(f"{directory} holds a LoRA adapter only: resume it with the lora section it was trained with")


class StudentWeights:
    """The full finetune: every weight of `model.lm` trains. `writes`: this process writes checkpoints (the
    main one under DDP); `teacher_dtype`: the dtype of the frozen teacher copy (distillation only)."""

    def __init__(self, model, writes: bool = True, teacher_dtype: torch.dtype = torch.float32):
        self.model, self.writes, self.teacher_dtype = model, writes, teacher_dtype

    def frozen_teacher(self):
        return frozen_teacher(self.model, self.teacher_dtype)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.lm.parameters() if p.requires_grad]

    def scoring_mode(self) -> None:
        """Dropout off for the scoring pass: the KL is to the policy the rollouts were sampled from."""
        self.model.lm.eval()

    def _names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.model.lm.named_parameters()}

    def optimizer_state(self, optimizer) -> dict[str, torch.Tensor]:
        return optimizer_tensors(optimizer, self._names())

    def load_optimizer_state(self, optimizer, flat: dict[str, torch.Tensor]) -> None:
        restore_optimizer(optimizer, self._names(), flat)

    def checkpoint_state(self, optimizer):
        """Collective under FSDP: (the weights a checkpoint writes, the optimizer's flat state), or None on a
        process that writes no checkpoint."""
        return (self, self.optimizer_state(optimizer)) if self.writes else None

    def write(self, directory: Path, extra_config: dict | None = None) -> None:
        """The checkpoint's weight files into an existing (temporary) directory; `extra_config` goes to
        config.json's musicgen_cfg section."""
        self.model.write_files(directory, extra_config)

    def read(self, directory: Path) -> None:
        """Load a checkpoint's weights (its tensors checked against the model's, as a load checks them)."""
        from musicgen_cfg.model import load_lm_state

        refuse_adapter_only(directory)
        load_lm_state(self.model.lm, load_state(directory, device=str(self.model.device)), directory)

    def export_model(self):
        """The student as a plain MusicGen (collective under FSDP; None off the main process there)."""
        return self.model


class LoraWeights(StudentWeights):
    """peft adapters on `model.lm` train, the base under them is frozen in `base_dtype` and is the teacher.

    The adapters are injected here, initialised from `seed` (which adapter dropout follows too).
    `base_spec`: the base model, reloaded at export to merge into float32 weights when `base_dtype` is lower."""

    def __init__(self, model, settings: lora.LoraSettings, base_dtype: torch.dtype, base_spec: str, seed: int,
                 writes: bool = True):
        super().__init__(model, writes, base_dtype)
        self.base_spec = base_spec
        torch.manual_seed(seed)
        self.teacher = lora.add_adapters(model, settings, base_dtype)  # one weight copy for student and teacher

    def frozen_teacher(self):
        return self.teacher

    def scoring_mode(self) -> None:
        """Base dropout off, adapter dropout (lora.dropout) on: a regulariser of the scoring pass only."""
        super().scoring_mode()
        lora.set_dropout(self.model.lm, True)

    def write(self, directory: Path, extra_config: dict | None = None) -> None:
        """adapter_model.safetensors + adapter_config.json (peft's format; `extra_config` has no place there)."""
        lora.write_adapter(self.model.lm, directory)

    def read(self, directory: Path) -> None:
        lora.load_adapter(self.model.lm, directory)

    def export_model(self):
        """The base with the adapters merged in (a bf16 base into the float32 weights as loaded, not into its
        own rounded copy)."""
        from musicgen_cfg.model import load_model

        base = load_model(self.base_spec) if self.teacher_dtype != torch.float32 else None
        return lora.merged_model(self.model, base)


class ShardedWeights(StudentWeights):
    """Every weight trains, sharded over the processes by FSDP2 once the accelerator has prepared `model.lm`;
    checkpoints and the export gather the full state (collectives: every process calls them)."""

    def __init__(self, model, teacher_dtype: torch.dtype = torch.float32):
        super().__init__(model, writes=False, teacher_dtype=teacher_dtype)  # the gathered copy writes

    def optimizer_state(self, optimizer) -> dict[str, torch.Tensor]:
        return fsdp.full_optimizer_state(self.model.lm, optimizer)

    def load_optimizer_state(self, optimizer, flat: dict[str, torch.Tensor]) -> None:
        fsdp.load_full_optimizer(self.model.lm, optimizer, flat)

    def checkpoint_state(self, optimizer):
        optimizer_state, full = self.optimizer_state(optimizer), fsdp.gathered_model(self.model)
        return (StudentWeights(full), optimizer_state) if full is not None else None

    def read(self, directory: Path) -> None:
        refuse_adapter_only(directory)
        fsdp.load_full_weights(self.model.lm, load_state(directory), directory)

    def export_model(self):
        return fsdp.gathered_model(self.model)


def student_weights(config, model, writes: bool) -> StudentWeights:
    """The strategy of a train config (DistillConfig: its `lora` section or `fsdp`) over the loaded `model`;
    `writes`: this process writes checkpoints. With lora, the adapters are injected into `model` here."""
    teacher_dtype = TEACHER_DTYPES[config.teacher_dtype]
    if config.lora is not None:
        return LoraWeights(model, config.lora, teacher_dtype, config.model, config.seed, writes)
    if config.fsdp:
        return ShardedWeights(model, teacher_dtype)
    return StudentWeights(model, writes, teacher_dtype)
