"""Checkpoint files: atomic directory writes and safetensors loading with one-line errors.

Every writer in the project (model save, trainer checkpoints, merges) goes through
`atomic_directory`, so an interrupted write never leaves a half-overwritten checkpoint.
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from musicgen_cfg.errors import UserError

# The file names of a checkpoint directory (transformers' conventions), spelled once for the project.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"  # a sharded checkpoint: model-0000k-of-0000n.safetensors
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # never opened: refused by name


def _writer_tag() -> str:
    """pid@host of this process, as atomic_directory writes it into its temporary names."""
    return f"{os.getpid()}@{socket.gethostname().replace('.', '_')}"


# .NAME.tmp.PID@HOST.RANDOM (the new directory being written) and .NAME.old.PID@HOST (the one it replaces)
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)\.(?P<pid>\d+)@(?P<host>[^.]*)(\..*)?$")


def _writer_alive(pid: int, host: str) -> bool:
    """Whether the process that made a temporary may still be writing (another host's: assume so)."""
    if host != socket.gethostname().replace(".", "_") or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(directory: str | Path, name: str = "*") -> list[Path]:
    """Clean up after atomic_directory writes whose process died (kill -9, power loss) in `directory`.

    `name`: a glob over the target names (default: all). A stale `.NAME.tmp.*` (a write that never
    finished) is deleted. A stale `.NAME.old.*` is the previous complete version: it is put back when
    the process died between its two renames (NAME missing), else deleted. Temporaries of live
    processes and of other hosts are left alone. Returns what was removed or restored."""
    touched = []
    for entry in Path(directory).glob(f".{name}.*"):
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_dir() or _writer_alive(int(match["pid"]), match["host"]):
            continue
        target = entry.with_name(match["name"])
        try:
            if match["kind"] == "old" and not target.exists():
                os.replace(entry, target)
            else:
                shutil.rmtree(entry)
        except FileNotFoundError:  # another process cleaned it first
            continue
        touched.append(entry)
    return touched


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yield a temp directory beside `path`; on success it replaces `path` in one rename.

    An existing `path` is moved aside first and deleted only after the new one is in place. Stale
    temporaries of an earlier write of `path` that was killed are cleaned up first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, glob.escape(path.name))
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.{_writer_tag()}.", dir=path.parent))
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
        old = path.with_name(f".{path.name}.old.{_writer_tag()}")
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


def safetensors_keys(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file, reading only its header (the file size is checked against
    it, so a truncated file is caught); a missing or corrupt file raises a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
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


def require_safetensors_weights(directory: str | Path) -> None:
    """A one-line UserError unless `directory` holds safetensors weights (single file or sharded index).

    Checked by name before any loader runs, so a directory with only pickled weights (pytorch_model.bin)
    is refused without a pickle ever being opened."""
    directory = Path(directory)
    if (directory / WEIGHTS_NAME).is_file() or (directory / WEIGHTS_INDEX_NAME).is_file():
        return
    pickled = [name for name in PICKLE_NAMES if (directory / name).exists()]
    if pickled:
        raise UserError(f"{directory} has only pickled weights ({pickled[0]}), which are never loaded: convert them "
                        f"to {WEIGHTS_NAME} (transformers: model.save_pretrained(DIR, safe_serialization=True))")
    raise UserError(f"{directory} is not a model checkpoint: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")


def check_output_directory(path: str | Path, flag: str = "--out") -> Path:
    """A one-line UserError unless `path` is (or can be created as) a writable directory; creates nothing.

    Checked before any work, so a bad --out never costs a model load or leaves a partial output:
    an existing file, a missing parent that is a file, or an unwritable place (read-only directory or
    file system) are refused. Writability is probed with a temporary file (os.access ignores
    read-only mounts and says yes to root)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{flag} {path} is not writable: {err.strerror or err} in {existing}") from None
    return path
