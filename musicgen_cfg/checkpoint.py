"""Checkpoint files: atomic directory writes and safetensors loading with one-line errors.

Every writer in the project (model save, trainer checkpoints, merges) goes through
`atomic_directory`, so an interrupted write never leaves a half-overwritten checkpoint.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from musicgen_cfg.errors import UserError


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yield a temp directory beside `path`; on success it replaces `path` in one rename.

    An existing `path` is moved aside first and deleted only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # mkdtemp (and safetensors) create owner-only entries; give the result the usual umask modes.
    umask = os.umask(0)
    os.umask(umask)
    for entry in tmp.iterdir():
        entry.chmod((0o777 if entry.is_dir() else 0o666) & ~umask)
    tmp.chmod(0o777 & ~umask)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None):
    """safetensors save of detached, contiguous CPU copies (shared storage is split)."""
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path), metadata=metadata)


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file raises a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"corrupt or truncated safetensors file {path}: {str(err).splitlines()[0]}") from None


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing {path.name} in {path.parent}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"malformed JSON in {path}: {err}") from None


def write_json(data: dict, path: str | Path):
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes, in name order: identifies weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A training run directory (`musicgen-cfg train` / `pretrain` --out RUN): RUN/checkpoint-<step>/ ... and
# the finished export. The layout lives here because a run directory is also a model spec (model.resolve_spec).
CHECKPOINT_PREFIX = "checkpoint-"
FINAL_EXPORT = "final"  # RUN/final: where `train` exports the finished model unless `export` says otherwise


def final_export_dir(run_dir: str | Path, export: str | None) -> Path:
    """Where a run's finished model goes: `export` when set, else RUN/final."""
    return Path(export) if export else Path(run_dir) / FINAL_EXPORT


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit())
