"""The project's one checkpoint layer: atomic directory writes, safetensors reads and writes (through the
`safetensors` library), checkpoint directories (single file or transformers' sharded convention), one-line errors.

- `atomic_directory`: every writer (model save, trainer checkpoints, exports, merges) writes into a temp
  directory that replaces the target in one rename; what a killed write leaves is cleaned up next time.
- `save_tensors` / `load_tensors` / `load_state`: whole state dicts (a directory's shards, when sharded).
- `save_sharded`: a model's state dict as a checkpoint's weights, one file or bounded shards (model saves, exports).
- `open_checkpoint`: a directory's config and tensor layout from the headers only; `Checkpoint.read`
  loads one tensor at a time (safe_open), so a streaming reader holds a few tensors, not a model.
- `write_sharded`: tensors produced one at a time into `model-0000k-of-0000n.safetensors` shards
  (each written by `safetensors.torch.save_file`, each at most `max_shard_bytes`) + the index, so a
  writer holds one shard, not a model.
Writes copy nothing: save_file writes from the tensors' own memory (only a second name over one storage,
such as T5's tied embeddings, which it refuses, is written from a copy; a GPU tensor from its CPU copy).

Any missing, truncated or corrupt file is a UserError naming it; no pickle is ever opened.
"""

import contextlib
import functools
import glob
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from musicgen_cfg.errors import UserError, cannot_write

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


# What a failed write raises: the OS's errors, and safetensors' own for an I/O error inside save_file.
_WRITE_ERRORS = (OSError, SafetensorError)


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yield a temp directory beside `path`; on success it replaces `path` in one rename.

    An existing `path` is moved aside first and deleted only after the new one is in place; a file
    there is never replaced by a directory (refused), and '' (the current directory) is refused. Stale
    temporaries of an earlier write of `path` that was killed are cleaned up first. A write that fails
    (in here or in the caller's writing) leaves no temporary and raises cannot_write."""
    if str(path) in ("", "."):
        raise UserError(f"cannot write {str(path)!r}: an empty path (the current directory); name a directory")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"cannot write {path}: it exists and is not a directory (a file is never replaced)")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, glob.escape(path.name))
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.{_writer_tag()}.", dir=path.parent))
        yield tmp
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
    except _WRITE_ERRORS as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise cannot_write(path, err) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _writable(tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """(name, tensor) pairs as save_file takes them: detached, contiguous, on the CPU, and no two over one storage
    (safetensors refuses tied weights, e.g. T5's shared and embed_tokens: a storage seen before is written from a
    copy, so the file holds both names, as transformers' own files do). Nothing else is copied."""
    out, storages = {}, set()
    for name, tensor in tensors:
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages:
            tensor = tensor.clone()
        storages.add(storage)
        out[name] = tensor
    return out


def save_tensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None):
    """One safetensors file of `tensors` (see _writable: written from their own memory)."""
    save_file(_writable(tensors.items()), str(path), metadata=metadata)


_READ_ERRORS = (SafetensorError, OSError, ValueError, RuntimeError)


def _unreadable(path: Path, err: Exception, label: str | None = None) -> UserError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"{label + ': ' if label else ''}{path} is truncated or not a safetensors file ({reason})")


def _existing_file(path: str | Path, label: str | None = None) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{label + ': ' if label else ''}weights file not found: {path}")
    return path


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt file raises a one-line UserError."""
    path = _existing_file(path)
    try:
        return load_file(str(path), device=device)
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from None


def safetensors_keys(path: str | Path) -> list[str]:
    """The tensor names of a safetensors file, reading only its header (the library checks the file size
    against it, so a truncated file is caught); a missing or corrupt file raises a one-line UserError."""
    return [info.name for info in read_header(path)[0]]


# safetensors' dtype names (the format's vocabulary) -> torch dtypes
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file, from its header: name, file, dtype, shape (file None: one about to be
    written, in a layout for write_sharded)."""

    name: str
    file: Path | None
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(path: str | Path, label: str | None = None) -> tuple[list[TensorInfo], dict]:
    """(tensors in file order, __metadata__) of a safetensors file, from its header alone (safe_open)."""
    path = _existing_file(path, label)
    try:
        with safe_open(str(path), framework="pt") as f:
            infos = []
            for name in f.offset_keys():
                view = f.get_slice(name)
                if view.get_dtype() not in SAFETENSORS_DTYPES:
                    raise ValueError(f"tensor {name} has the unsupported dtype {view.get_dtype()}")
                infos.append(TensorInfo(name, path, SAFETENSORS_DTYPES[view.get_dtype()], tuple(view.get_shape())))
            return infos, dict(f.metadata() or {})
    except _READ_ERRORS as err:
        raise _unreadable(path, err, label) from None


def read_tensor(info: TensorInfo, label: str | None = None) -> torch.Tensor:
    """Load one tensor (refused when not finite: check_finite_weights). safetensors returns a view of a private
    mapping of the file (no copy: its pages are file-backed, in RSS once touched, and a write copies the page);
    that mapping, one per read, lives as long as the tensor, so memory stays at the tensors the caller holds."""
    try:
        with safe_open(str(info.file), framework="pt") as f:
            tensor = f.get_tensor(info.name)
    except _READ_ERRORS as err:
        raise _unreadable(info.file, err, label) from None
    check_finite_weights({info.name: tensor}, label or str(info.file))
    return tensor


def check_finite_weights(state: Mapping[str, torch.Tensor], label: str) -> None:
    """A one-line UserError when a floating-point weight holds NaN or inf: such a model generates noise
    or NaN logits, and a merge with it is NaN everywhere it touches, so it is refused where it is loaded."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise UserError(f"{label}: tensor {name} has non-finite values (NaN or inf); refusing to load it")


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite. A NaN or inf element makes the sum NaN or inf, so a finite sum settles it
    without allocating anything; only a sum that overflowed is checked element-wise. (isfinite's whole-tensor mask,
    a quarter of an fp32 tensor, is a transient the allocator keeps: loads grew by ~0.4x the model.)"""
    return math.isfinite(float(tensor.sum())) or bool(torch.isfinite(tensor).all())


# --------------------------------------------------------------------------------- checkpoint directories


@dataclass
class Checkpoint:
    """An opened (not loaded) checkpoint directory: its config.json and where each tensor lives."""

    label: str
    path: Path
    config: dict
    shard_files: list[str]  # weight file names in the directory, in shard order
    tensors: dict[str, TensorInfo]  # in shard order, then file order
    metadata: dict  # the first shard's safetensors __metadata__

    def read(self, name: str) -> torch.Tensor:
        return read_tensor(self.tensors[name], self.label)

    def state(self) -> Mapping[str, torch.Tensor]:
        """The tensors as a read-only mapping that loads each tensor when it is looked up."""
        return _LazyState(self)

    @functools.cached_property
    def weights_sha256(self) -> str:
        """The project's weight identity (state_sha256, as in generate/train manifests), one tensor at a time; cached."""
        return state_sha256(self.state())


class _LazyState(Mapping):
    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.checkpoint.read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.checkpoint.tensors)

    def __len__(self) -> int:
        return len(self.checkpoint.tensors)


def open_checkpoint(path: str | os.PathLike, label: str = "checkpoint") -> Checkpoint:
    """Read config.json and the safetensors headers of a checkpoint directory (model.safetensors, or the
    shards named by model.safetensors.index.json); no tensor is loaded. Every inconsistency is a UserError."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{label} is not a model checkpoint: {path} is not a directory")
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise UserError(f"{label} is not a model checkpoint: no {CONFIG_NAME} in {path}")
    config = read_json(config_path, label)
    if (path / WEIGHTS_INDEX_NAME).is_file():
        try:
            weight_map = dict(json.loads((path / WEIGHTS_INDEX_NAME).read_text())["weight_map"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as err:
            raise UserError(f"{label}: {path / WEIGHTS_INDEX_NAME} is not a valid safetensors index ({err})") from None
        shard_files = sorted(set(weight_map.values()), key=str)
        for shard in shard_files:  # writers reuse these names: they must stay inside the directory
            if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
                raise UserError(f"{label}: {WEIGHTS_INDEX_NAME} names an invalid shard file {shard!r}")
    elif (path / WEIGHTS_NAME).is_file():
        weight_map, shard_files = None, [WEIGHTS_NAME]
    else:
        raise _no_safetensors_weights(path, label)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict = {}
    for shard in shard_files:
        if not (path / shard).is_file():
            raise UserError(f"{label}: shard {shard} listed in {path / WEIGHTS_INDEX_NAME} is missing")
        infos, shard_metadata = read_header(path / shard, label)
        metadata = metadata or shard_metadata
        for info in infos:
            if info.name in tensors:
                raise UserError(f"{label}: tensor {info.name} is stored twice in {path}")
            if weight_map is not None and weight_map.get(info.name) != shard:
                raise UserError(f"{label}: {WEIGHTS_INDEX_NAME} does not place tensor {info.name} in {shard}, "
                                f"where it is stored")
            tensors[info.name] = info
    if weight_map is not None and len(weight_map) != len(tensors):
        missing = next(name for name in weight_map if name not in tensors)
        raise UserError(f"{label}: {WEIGHTS_INDEX_NAME} lists tensor {missing} but no shard holds it")
    return Checkpoint(label, path, config, shard_files, tensors, metadata)


def load_state(directory: str | Path, device: str = "cpu", label: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, single-file or sharded, validated by open_checkpoint (and finite)."""
    checkpoint = open_checkpoint(directory, label)
    state = {}
    for shard in checkpoint.shard_files:
        state.update(load_tensors(checkpoint.path / shard, device=device))
    check_finite_weights(state, f"{label} {checkpoint.path}")
    return state


# ------------------------------------------------------------------------------------ sharded writes

MAX_SHARD_BYTES = 256 * 2**20  # what one shard (so a streaming writer) holds in memory at most, unless one tensor is larger
# The shards of a saved or exported model (save_sharded): its tensors already exist, so the bound costs no memory
# on the CPU (a GPU model's shard is copied to the CPU); 2 GiB keeps a large model to a few files for the hub.
EXPORT_SHARD_BYTES = 2 * 2**30


def shard_name(index: int, count: int) -> str:
    """transformers' shard file name: model-00001-of-00003.safetensors (index from 1)."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def plan_shards(groups: Sequence[Sequence[TensorInfo]], max_shard_bytes: int = MAX_SHARD_BYTES) -> list[list[TensorInfo]]:
    """Split tensors into shards in order: a shard ends at the end of each group (e.g. a source shard, so a
    sharded input keeps its sharding) and before any tensor that would take it over max_shard_bytes.
    A tensor larger than the bound gets a shard of its own."""
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[list[TensorInfo]] = []
    for group in groups:
        current, size = [], 0
        for info in group:
            if current and size + info.nbytes > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append(info)
            size += info.nbytes
        if current:
            shards.append(current)
    return shards


def write_sharded(directory: Path, groups: Sequence[Sequence[TensorInfo]], produce: Callable[[str], torch.Tensor],
                  metadata: Mapping[str, str] | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write tensors produced one at a time as a checkpoint's weights; returns the file names.

    One shard -> model.safetensors; several -> model-0000k-of-0000n.safetensors + model.safetensors.index.json
    (transformers' convention, so transformers and open_checkpoint read either). Each shard is written
    by safetensors' save_file and released before the next is produced: memory holds one shard.
    `produce(name)` must return the dtype and shape the layout gives (checked)."""
    shards = plan_shards(groups, max_shard_bytes)
    names = [WEIGHTS_NAME] if len(shards) == 1 else [shard_name(i + 1, len(shards)) for i in range(len(shards))]
    def produced(info: TensorInfo) -> torch.Tensor:
        tensor = produce(info.name)
        if tensor.dtype != info.dtype or tuple(tensor.shape) != info.shape:
            raise ValueError(f"produced {info.name} as {tensor.dtype} {list(tensor.shape)}, "
                             f"the layout says {info.dtype} {list(info.shape)}")
        return tensor

    for name, shard in zip(names, shards):
        tensors = _writable((info.name, produced(info)) for info in shard)
        save_file(tensors, str(directory / name), metadata=dict(metadata) if metadata else None)
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(info.nbytes for shard in shards for info in shard)},
                 "weight_map": {info.name: name for name, shard in zip(names, shards) for info in shard}}
        (directory / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return names


def save_sharded(state: Mapping[str, torch.Tensor], directory: Path, metadata: Mapping[str, str] | None = None,
                 max_shard_bytes: int = EXPORT_SHARD_BYTES) -> list[str]:
    """A state dict as a checkpoint's weights in `directory`, in its order: model.safetensors when it fits in
    max_shard_bytes, else shards + index (write_sharded); returns the file names."""
    layout = [TensorInfo(name, None, tensor.dtype, tuple(tensor.shape)) for name, tensor in state.items()]
    return write_sharded(directory, [layout], state.__getitem__, metadata, max_shard_bytes)


def weight_file_hashes(directory: Path) -> dict:
    """The manifest fields of a checkpoint directory's weight files: `model_safetensors_sha256` of its one file, or
    `model_shards_sha256` (file -> sha256, the index included) of a sharded one."""
    if (directory / WEIGHTS_INDEX_NAME).is_file():
        files = sorted({*json.loads((directory / WEIGHTS_INDEX_NAME).read_text())["weight_map"].values(),
                        WEIGHTS_INDEX_NAME})
        return {"model_shards_sha256": {name: file_sha256(directory / name) for name in files}}
    return {"model_safetensors_sha256": file_sha256(directory / WEIGHTS_NAME)}


def read_json(path: str | Path, label: str | None = None) -> dict:
    """The JSON object in `path` (a file this project or another tool wrote, so foreign input): missing,
    not UTF-8, malformed, nested too deeply or not an object is one UserError (`label` names it)."""
    path = Path(path)
    where = f"{label}: {path}" if label else str(path)
    if not path.is_file():
        raise UserError(f"{label + ': ' if label else ''}missing {path.name} in {path.parent}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise UserError(f"malformed JSON in {where}: {str(err).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise UserError(f"malformed JSON in {where}: expected an object, got {type(data).__name__}")
    return data


def atomic_write_text(path: str | Path, text: str) -> None:
    """`text` at `path`, atomically: written to a temporary file beside it, then renamed over it, so a crash leaves
    the old file or the new one, never half of one (and no temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(data: dict, path: str | Path):
    """`data` as sorted, indented JSON at `path`, atomically (atomic_write_text)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes, in name order: identifies weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the tensor's own bytes: no copy
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _no_safetensors_weights(directory: Path, label: str) -> UserError:
    """Refused by name, so a directory with only pickled weights (pytorch_model.bin) never has a pickle opened."""
    pickled = [name for name in PICKLE_NAMES if (directory / name).exists()]
    if pickled:
        return UserError(f"{label} has only pickled weights ({pickled[0]}), which are never loaded: convert them "
                         f"to {WEIGHTS_NAME} (transformers: model.save_pretrained(DIR, safe_serialization=True))")
    return UserError(f"{label} is not a model checkpoint: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {directory}")
