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
    CHECKPOINT_PREFIX,
    atomic_directory,
    checkpoints,
    load_state,
    load_tensors,
    open_checkpoint,
    read_json,
    remove_stale_temporaries,
    safetensors_keys,
    save_tensors,
    write_json,
)
from musicgen_cfg.errors import UserError

OPTIMIZER_NAME = "optimizer.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW state as flat tensors named after the parameters (safetensors has no nesting)."""
    flat = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                flat[f"{names[id(param)]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat


def restore_optimizer(optimizer: torch.optim.Optimizer, names: dict[int, str], flat: dict[str, torch.Tensor]):
    for group in optimizer.param_groups:
        for param in group["params"]:
            prefix = f"{names[id(param)]}::"
            state = {k[len(prefix):]: v.to(param.device) for k, v in flat.items() if k.startswith(prefix)}
            if state:
                optimizer.state[param] = state


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


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, generator: torch.Generator,
                    data_rng: random.Random, state: dict, keep_last: int, extra_config: dict | None = None,
                    write_weights=None, optimizer_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write checkpoint-<step>/ and prune old ones (keeping `keep_last`).

    `write_weights(directory)` replaces the model files (a LoRA run writes its adapter only) and
    `optimizer_state` the optimizer's flat tensors (gathered from shards under FSDP).
    """
    path = Path(run_dir) / f"{CHECKPOINT_PREFIX}{step:06d}"
    remove_stale_temporaries(run_dir, f"{CHECKPOINT_PREFIX}*")  # of saves killed earlier, at any step
    with atomic_directory(path) as tmp:
        if write_weights is None:
            model.write_files(tmp, extra_config)
        else:
            write_weights(tmp)
        if optimizer_state is None:
            optimizer_state = optimizer_tensors(optimizer, {id(p): n for n, p in model.lm.named_parameters()})
        tensors = dict(optimizer_state)
        tensors["rng::torch"] = torch.get_rng_state()
        tensors["rng::generator"] = generator.get_state()
        save_tensors(tensors, tmp / OPTIMIZER_NAME)
        write_json({**state, "step": step, "scheduler": scheduler.state_dict(),
                    "data_rng": _jsonable_random_state(data_rng.getstate())}, tmp / TRAINER_STATE_NAME)
    for old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, generator: torch.Generator, data_rng: random.Random,
                    load_weights=None, load_optimizer=None) -> dict:
    """Restore weights, optimizer, scheduler and every RNG from checkpoint `path`; returns trainer_state.

    `load_weights(path)` and `load_optimizer(flat tensors)` replace the plain-model defaults (LoRA, FSDP).
    """
    from musicgen_cfg.model import _load_lm_state

    if load_weights is None:
        _load_lm_state(model.lm, load_state(path, device=str(model.device)), path)
    else:
        load_weights(path)
    tensors = load_tensors(path / OPTIMIZER_NAME)
    torch.set_rng_state(tensors.pop("rng::torch"))
    generator.set_state(tensors.pop("rng::generator"))
    if load_optimizer is None:
        restore_optimizer(optimizer, {id(p): n for n, p in model.lm.named_parameters()}, tensors)
    else:
        load_optimizer(tensors)
    state = read_json(path / TRAINER_STATE_NAME)
    scheduler.load_state_dict(state["scheduler"])
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):  # the scheduler state alone does not set it
        group["lr"] = lr
    data_rng.setstate(_random_state_from_json(state["data_rng"]))
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
