"""Shared training plumbing: YAML configs with command-line overrides, checkpoints with exact resume, logs.

Used by `musicgen-cfg pretrain` (the default base model) and `musicgen-cfg train` (distillation).

A run directory holds `checkpoint-000123/` folders (HF-style: config.json + model.safetensors, plus
optimizer.safetensors and trainer_state.json), `metrics.csv`, TensorBoard events and `run.json`.
Checkpoints are written atomically and only the last `keep_last` are kept.
"""

import argparse
import csv
import dataclasses
import math
import random
import shutil
import sys
import types
import typing
from pathlib import Path

import torch
import yaml

from musicgen_cfg.checkpoint import atomic_directory, load_tensors, read_json, save_tensors, write_json
from musicgen_cfg.errors import UserError

CHECKPOINT_PREFIX = "checkpoint-"


# ------------------------------------------------------------------------------------------- configs

def _field_type(cls, name: str):
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return (args[0] if is_union and len(args) == 1 else hint), is_union


def _section(cls, name: str):
    """The dataclass type of a nested config section (e.g. `lora`), or None for a plain value."""
    kind, _ = _field_type(cls, name)
    return kind if dataclasses.is_dataclass(kind) else None


def _convert(cls, name: str, value, label: str | None = None):
    kind, optional = _field_type(cls, name)
    if value is None or (optional and _is_none(value)):
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind in (int, float, str):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return kind(value)
        if typing.get_origin(kind) is tuple or kind is tuple:
            return tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    except (TypeError, ValueError):
        raise UserError(f"config key {label or name!r}: cannot read {value!r} as {getattr(kind, '__name__', kind)}") from None
    return value


def load_config(cls, path: str | Path | None, overrides: list[str] | None = None):
    """cls(**YAML) with `--key value` / `--key=value` overrides; unknown keys fail with one line."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"malformed YAML in {path}: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise UserError(f"config {path} must be a mapping of key: value")
    data.update(parse_overrides(overrides or []))
    return _build(cls, data)


def _is_none(value) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("none", "null"))


def _build(cls, data: dict, prefix: str = ""):
    """cls(**data): a section field takes a mapping (YAML) updated by its dotted keys (`--lora.rank 8`)."""
    flat, dotted = {}, {}
    for key, value in data.items():
        head, dot, rest = key.partition(".")
        if dot:
            dotted.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    unknown = sorted((set(flat) | set(dotted)) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        key = prefix + unknown[0]
        raise UserError(f"unknown config key {key!r} (see --help-config for the keys)")
    values = {}
    for key in [f.name for f in dataclasses.fields(cls) if f.name in flat or f.name in dotted]:
        section, label = _section(cls, key), prefix + key
        if section is None:
            if key in dotted:
                raise UserError(f"config key {label!r} is a value, not a section: write --{label} VALUE")
            values[key] = _convert(cls, key, flat[key], label)
        elif key in flat and _is_none(flat[key]) and key not in dotted:
            values[key] = None
        elif key in flat and not isinstance(flat[key], dict) and not _is_none(flat[key]):
            raise UserError(f"config key {label!r} is a section: give it a mapping of key: value or --{label}.KEY VALUE")
        else:
            mapping = flat.get(key) if isinstance(flat.get(key), dict) else {}
            values[key] = _build(section, {**mapping, **dotted.get(key, {})}, prefix=f"{label}.")
    return cls(**values)


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    values, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise UserError(f"expected --key value, got {token!r}")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(tokens):
            value, i = tokens[i + 1], i + 1
        else:
            raise UserError(f"missing value for --{key}")
        values[key.replace("-", "_")] = value
        i += 1
    return values


def config_help(cls, prefix: str = "") -> str:
    """One line per field: name, default, help (from field metadata); a section's fields as section.name."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {prefix}{f.name:<{24 - len(prefix)}} {default!r:<22} {f.metadata.get('help', '')}")
        section = _section(cls, f.name)
        if section is not None:
            lines.append(config_help(section, prefix=f"{prefix}{f.name}."))
    return "\n".join(lines)


def register_config_command(subparsers, name: str, help: str, doc: str, config_cls, run, resumable: bool = True):
    """A subcommand driven by one config dataclass: --config YAML, `--key value` overrides, --help-config
    and (for training) --resume. `run(config, command=..., [resume=...])` does the work."""
    parser = subparsers.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config in configs/; --key value pairs override it")
    if resumable:
        parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--help-config", action="store_true", help="list the config keys and exit")

    def main(args) -> int:
        if args.help_config:
            print(config_help(config_cls))
            return 0
        config = load_config(config_cls, args.config, args.overrides)
        command = "musicgen-cfg " + " ".join(sys.argv[1:])
        run(config, command=command, **({"resume": args.resume} if resumable else {}))
        return 0

    parser.set_defaults(func=main, accepts_overrides=True)


def field(default, help: str):
    """A dataclass field with help text (shown by --help-config)."""
    return dataclasses.field(default=default, metadata={"help": help})


# --------------------------------------------------------------------------------------- checkpoints

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


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit())


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, generator: torch.Generator,
                    data_rng: random.Random, state: dict, keep_last: int, extra_config: dict | None = None,
                    write_weights=None, optimizer_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Atomically write checkpoint-<step>/ and prune old ones (keeping `keep_last`).

    `write_weights(directory)` replaces the model files (a LoRA run writes its adapter only) and
    `optimizer_state` the optimizer's flat tensors (gathered from shards under FSDP).
    """
    path = Path(run_dir) / f"{CHECKPOINT_PREFIX}{step:06d}"
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
        save_tensors(tensors, tmp / "optimizer.safetensors")
        write_json({**state, "step": step, "scheduler": scheduler.state_dict(),
                    "data_rng": _jsonable_random_state(data_rng.getstate())}, tmp / "trainer_state.json")
    for old in checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, generator: torch.Generator, data_rng: random.Random,
                    load_weights=None, load_optimizer=None) -> dict:
    """Restore weights, optimizer, scheduler and every RNG from checkpoint `path`; returns trainer_state.

    `load_weights(path)` and `load_optimizer(flat tensors)` replace the plain-model defaults (LoRA, FSDP).
    """
    from musicgen_cfg.model import WEIGHTS, _load_lm_state

    if load_weights is None:
        _load_lm_state(model.lm, load_tensors(path / WEIGHTS, device=str(model.device)), path)
    else:
        load_weights(path)
    tensors = load_tensors(path / "optimizer.safetensors")
    torch.set_rng_state(tensors.pop("rng::torch"))
    generator.set_state(tensors.pop("rng::generator"))
    if load_optimizer is None:
        restore_optimizer(optimizer, {id(p): n for n, p in model.lm.named_parameters()}, tensors)
    else:
        load_optimizer(tensors)
    state = read_json(path / "trainer_state.json")
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


def write_run_info(run_dir: Path, config, command: str):
    write_json({"config": dataclasses.asdict(config), "command": command}, Path(run_dir) / "run.json")


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """LR multiplier at `step`: linear warm-up to 1 over `warmup` steps, then cosine decay to `floor` at
    `total` steps (and `floor` after). floor = 1 is a constant LR after warm-up, floor = 0 decays to zero.

    The one schedule of the project (pretrain, distillation, scorer and embedder training).
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
