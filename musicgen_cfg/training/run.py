"""Shared training plumbing: checkpoints with exact resume, metrics logs, run info (the optimiser and its
schedule: musicgen_cfg/optim.py).

Used by `musicgen-cfg pretrain` (the default base model) and `musicgen-cfg train` (distillation).

A run directory holds `checkpoint-000123/` folders (HF-style: config.json + model.safetensors, plus
optimizer.safetensors and trainer_state.json), `metrics.csv`, TensorBoard events, `run.json` and, once
training ends, `final/` (the exported model, unless the config's `export` names another place).
Checkpoints are written atomically and only the last `keep_last` are kept.
"""

import csv
import dataclasses
import json
import random
import shutil
from pathlib import Path

import torch

from musicgen_cfg.checkpoint import (
    atomic_directory,
    load_tensors,
    open_checkpoint,
    read_json,
    remove_stale_temporaries,
    safetensors_keys,
    save_tensors,
    write_json,
)
from musicgen_cfg.config import REBUILD_SHIPPED_HELP, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.run_layout import CHECKPOINT_PREFIX, checkpoints

OPTIMIZER_NAME = "optimizer.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"

# The run settings every trainer here has (help and bounds, declared once); a trainer gives its own default.
RUN_OPTIONS = {
    "log_every": ("steps between metric rows", {"min": 1}),
    "checkpoint_every": ("steps between checkpoints", {"min": 1}),
    "keep_last": ("checkpoints kept", {"min": 1}),
    "threads": ("torch CPU threads", {"min": 1}),
    "device": ("auto | cpu | cuda", {}),
    "rebuild_shipped": (REBUILD_SHIPPED_HELP, {}),
}


def run_option(name: str, default):
    """A trainer's config field for the run setting `name` (RUN_OPTIONS), with the trainer's default."""
    help, bounds = RUN_OPTIONS[name]
    return field(default, help, **bounds)


@dataclasses.dataclass
class TrainerState:
    """What a checkpoint restores besides the weights: the optimizer (its state through the run's
    StudentWeights), the LR schedule and every RNG (torch's global one, `generator`, `data_rng`)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    data_rng: random.Random


def resume_point(run_dir: str | Path, resume: bool, clean: bool = True, config=None) -> Path | None:
    """The checkpoint a run continues from (None: a fresh run), checked before the run writes anything.

    A fresh run refuses a directory that already holds checkpoints; --resume refuses one without any,
    a latest checkpoint with a missing, truncated or corrupt file, and (given the run's `config`) a
    changed fixed setting (check_resume_config). `clean` (the writing process only): first remove what
    saves killed mid-write left behind (remove_stale_temporaries)."""
    run_dir = Path(run_dir)
    if clean and run_dir.is_dir():
        remove_stale_temporaries(run_dir)
    found = checkpoints(run_dir)
    if found and not resume:
        raise UserError(f"{run_dir} already holds checkpoints: pass --resume to continue or choose another --out")
    if not resume:
        return None
    if not found:
        raise UserError(f"--resume: {run_dir} holds no {CHECKPOINT_PREFIX}* to continue from "
                        f"(run without --resume to start a new run)")
    check_checkpoint(found[-1])
    if config is not None:
        check_resume_config(run_dir, config)
    return found[-1]


def check_checkpoint(path: Path) -> None:
    """A one-line UserError unless every file of a trainer checkpoint is present and readable (headers only).

    A LoRA run's checkpoint holds its adapter only (peft's adapter_config.json + adapter_model.safetensors,
    training/lora.py) instead of config.json + the model's weights."""
    from musicgen_cfg.training.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    if (path / ADAPTER_CONFIG).exists() or (path / ADAPTER_WEIGHTS).exists():
        adapter = read_json(path / ADAPTER_CONFIG)
        if not isinstance(adapter, dict) or not isinstance(adapter.get("r"), int):
            raise UserError(f"{path / ADAPTER_CONFIG} names no adapter rank r: not a LoRA adapter config")
        if not safetensors_keys(path / ADAPTER_WEIGHTS):
            raise UserError(f"{path / ADAPTER_WEIGHTS} holds no tensor: not a LoRA adapter")
    else:
        open_checkpoint(path, f"checkpoint {path}")  # config.json and the weights' headers
    if "rng::torch" not in safetensors_keys(path / OPTIMIZER_NAME):
        raise UserError(f"{path / OPTIMIZER_NAME} holds no RNG state: not a trainer checkpoint")
    state = read_json(path / TRAINER_STATE_NAME)
    missing = [key for key in ("step", "scheduler", "data_rng") if key not in state]
    if missing:
        raise UserError(f"{path / TRAINER_STATE_NAME} lacks {missing[0]!r}: not a trainer checkpoint")


def save_checkpoint(run_dir: Path, step: int, weights, trainer: TrainerState, state: dict, keep_last: int,
                    extra_config: dict | None = None) -> Path | None:
    """Atomically write checkpoint-<step>/ and prune old ones (keeping `keep_last`); returns its path.

    `weights` (training/student_weights.py) gives the weight files and the optimizer's flat state; every
    process calls this (collective under FSDP, where the shards are gathered) and the one that writes
    (weights.checkpoint_state) does, the others return None. `state` and the step, schedule and data RNG
    go to trainer_state.json, `extra_config` to config.json's musicgen_cfg section.
    """
    held = weights.checkpoint_state(trainer.optimizer)
    if held is None:
        return None
    saved, optimizer_state = held
    path = Path(run_dir) / f"{CHECKPOINT_PREFIX}{step:06d}"
    remove_stale_temporaries(run_dir, f"{CHECKPOINT_PREFIX}*")  # of saves killed earlier, at any step
    with atomic_directory(path) as tmp:
        saved.write(tmp, extra_config)
        tensors = dict(optimizer_state)
        tensors["rng::torch"] = torch.get_rng_state()
        tensors["rng::generator"] = trainer.generator.get_state()
        save_tensors(tensors, tmp / OPTIMIZER_NAME)
        write_json({**state, "step": step, "scheduler": trainer.scheduler.state_dict(),
                    "data_rng": _jsonable_random_state(trainer.data_rng.getstate())}, tmp / TRAINER_STATE_NAME)
    for old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, weights, trainer: TrainerState) -> dict:
    """Restore the weights (`weights.read`: collective under FSDP), optimizer, scheduler and every RNG from
    checkpoint `path`; returns its trainer_state.json."""
    weights.read(path)
    tensors = load_tensors(path / OPTIMIZER_NAME)
    torch.set_rng_state(tensors.pop("rng::torch"))
    trainer.generator.set_state(tensors.pop("rng::generator"))
    weights.load_optimizer_state(trainer.optimizer, tensors)
    state = read_json(path / TRAINER_STATE_NAME)
    trainer.scheduler.load_state_dict(state["scheduler"])
    # the scheduler's state alone does not set the optimizer's LR
    for group, lr in zip(trainer.optimizer.param_groups, trainer.scheduler.get_last_lr()):
        group["lr"] = lr
    trainer.data_rng.setstate(_random_state_from_json(state["data_rng"]))
    return state


def _jsonable_random_state(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _random_state_from_json(state):
    version, internal, gauss = state
    return version, tuple(internal), gauss


# ------------------------------------------------------------------------------------------- logging

class MetricsLog:
    """Append-only metrics.csv + TensorBoard scalars, one row per logged step."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.columns: list[str] | None = None
        if self.path.is_file():
            with open(self.path) as f:
                header = f.readline().strip()
                self.columns = header.split(",") if header else None

    def log(self, step: int, metrics: dict[str, float]):
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        new = [k for k in row if k not in (self.columns or [])]
        if new:  # a metric seen for the first time (e.g. a periodic eval): widen the header
            rows = self._read()[1:] if self.columns else []
            self.columns = (self.columns or []) + new
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows([self.columns, *[r + [""] * (len(self.columns) - len(r)) for r in rows]])
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, float(v), step)
            self.writer.flush()

    def _read(self) -> list[list[str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as f:
            return list(csv.reader(f))

    def truncate_after(self, step: int):
        """On resume, drop rows logged after the checkpoint (they will be logged again)."""
        rows = self._read()
        if rows:
            keep = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= step]
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(keep)


def check_resume_config(run_dir: Path, config) -> None:
    """--resume with a `fixed` setting (config.field) other than the one the run was trained with is refused:
    the checkpoint's weights were not trained that way, and the manifest would say they were. Compared with
    run.json (written at every start); settings that do not change the result (steps, threads, out, ...) may."""
    path = Path(run_dir) / "run.json"
    recorded = read_json(path, "--resume").get("config") if path.is_file() else None
    recorded = recorded if isinstance(recorded, dict) else {}
    now = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples as JSON lists, like run.json
    for f in dataclasses.fields(config):
        if f.metadata.get("fixed") and f.name in recorded and recorded[f.name] != now[f.name]:
            raise UserError(f"--resume: {f.name} is {now[f.name]!r} but the run in {run_dir} was trained with "
                            f"{recorded[f.name]!r}; resume with the run's value or start a new --out")


def write_run_info(run_dir: Path, config, command: str):
    write_json({"config": dataclasses.asdict(config), "command": command}, Path(run_dir) / "run.json")
