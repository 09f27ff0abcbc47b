"""Weight merging, the paper's deployment-time knob: theta(lam) = (1 - lam) theta_q + lam theta_d.

theta_q is the beta = 0 (quality) model, theta_d the beta = 15 (diversity) model, both finetuned from
the same base theta_0, so their weights can be mixed tensor by tensor. This file holds the whole idea:

- the per-tensor rules `lerp` (the paper), `slerp` and `task_arithmetic` (relative to theta_0);
- `merge_state_dicts` for in-memory state dicts;
- `merge_checkpoints` / `sweep_checkpoints` for checkpoint directories, streamed tensor by tensor
  (memory stays at a few tensors, whatever the model size) and written atomically;
- `LiveMerge`, which rewrites a live module's parameters in place when a serving slider moves lam.

Command line: `musicgen-cfg merge --models Q D --lam 0.5 --out DIR` (merging/cli.py).
"""

import copy
import functools
import json
import math
import os
import shlex
import shutil
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from musicgen_cfg.checkpoint import atomic_directory, state_sha256
from musicgen_cfg.errors import UserError
from musicgen_cfg.export import MODEL_CARD, TRAINING_STATE_FILES, write_hub_files

METHODS = ("lerp", "slerp", "task_arithmetic")

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "merge_manifest.json"
# Files of a source that describe that source alone (the distillation export's manifest: its
# training run and sha256); copied into a merge they would be false, so they are not copied.
SOURCE_ONLY_FILES = frozenset({MANIFEST_FILE, "manifest.json"})

# config.json keys (at any depth) that describe how a file was written, not the architecture.
NON_ARCHITECTURE_KEYS = frozenset({"_name_or_path", "transformers_version", "torch_dtype", "dtype"})
# Keys of our own "musicgen_cfg" config block that record provenance (how the weights were trained
# or merged: distillation writes beta, teacher_guidance_scale, base_model, base_sha256); the
# quality and diversity models differ there by design.
PROVENANCE_KEYS = frozenset(
    {"beta", "teacher_guidance_scale", "base_model", "base_sha256", "lambda", "merge", "training", "license"}
)

# SLERP falls back to LERP above this |cos| between the flattened tensors: the great circle is then
# numerically undefined (sin(omega) ~ 0) and both rules agree anyway for parallel tensors.
SLERP_PARALLEL_COS = 0.9995

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


# ---------------------------------------------------------------------------------------------
# The per-tensor rules. Inputs are float tensors of one shape; callers upcast (see `_merge_tensor`).


def lerp(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """(1 - lam) a + lam b; torch.lerp returns a exactly at lam = 0 and b exactly at lam = 1."""
    return torch.lerp(a, b, lam)


def slerp(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors; LERP when they are (anti)parallel or zero.

    For unit-norm a and b every point has unit norm. The coefficients are computed in Python floats
    so that lam = 0 and lam = 1 give exactly (1, 0) and (0, 1): the endpoints come back bit-exact.
    """
    a_flat, b_flat = a.reshape(-1), b.reshape(-1)
    norm_product = float(a_flat.norm() * b_flat.norm())
    if norm_product == 0.0:
        return lerp(a, b, lam)
    cos = max(-1.0, min(1.0, float(torch.dot(a_flat, b_flat)) / norm_product))
    if abs(cos) > SLERP_PARALLEL_COS:
        return lerp(a, b, lam)
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    return a * (math.sin((1.0 - lam) * omega) / sin_omega) + b * (math.sin(lam * omega) / sin_omega)


def task_arithmetic(
    base: torch.Tensor, models: Sequence[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """theta_0 + sum_i w_i (theta_i - theta_0): add weighted task vectors to the shared base.

    Computed as the equal affine combination (1 - sum_i w_i) theta_0 + sum_i w_i theta_i, in place:
    one output-sized buffer, and a single model with weight 1 comes back exactly (no rounding of
    theta_i - theta_0).
    """
    merged = base * (1.0 - sum(weights))
    for model, weight in zip(models, weights, strict=True):
        merged.add_(model, alpha=weight)
    return merged


# ---------------------------------------------------------------------------------------------
# What to compute: the method and its coefficients, checked once before any tensor is touched.


@dataclass(frozen=True)
class Recipe:
    """A validated merge: `lam` for lerp/slerp, `weights` (one per model) for task_arithmetic."""

    method: str
    lam: float | None
    weights: tuple[float, ...] | None
    extrapolation: bool


def make_recipe(
    method: str,
    num_models: int,
    *,
    lam: float | None = None,
    weights: Sequence[float] | None = None,
    has_base: bool = False,
    allow_extrapolation: bool = False,
) -> Recipe:
    """Check the merge parameters; raise UserError on anything a user could get wrong.

    A merge is an interpolation when the result lies in the convex hull of its inputs: lam in
    [0, 1] for lerp/slerp; for task arithmetic all weights >= 0 with sum <= 1 (the base counts as
    an input). Anything else is extrapolation and needs allow_extrapolation.
    """
    if method not in METHODS:
        raise UserError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    for value in [lam, *(weights or [])]:
        if value is not None and not math.isfinite(value):
            raise UserError(f"merge coefficients must be finite numbers, got {value}")
    if method == "task_arithmetic":
        if not has_base:
            raise UserError("task_arithmetic needs the shared base model theta_0 (--base DIR)")
        if weights is not None and lam is not None:
            raise UserError("give either --weights or --lam for task_arithmetic, not both")
        if weights is None:
            if lam is None or num_models != 2:
                raise UserError(
                    "task_arithmetic needs --weights (one per model), or --lam with exactly two models"
                )
            weights = (1.0 - lam, lam)  # equals lerp(theta_q, theta_d, lam)
        if len(weights) != num_models:
            raise UserError(f"got {len(weights)} weights for {num_models} models; give one weight per model")
        # the tolerance keeps float rounding of weights that sum to 1 from counting as extrapolation
        extrapolation = any(w < 0 for w in weights) or sum(weights) > 1.0 + 1e-9
        if extrapolation and not allow_extrapolation:
            raise UserError(
                "task_arithmetic weights "
                + ",".join(f"{w:g}" for w in weights)
                + " extrapolate (a weight < 0 or "
                "their sum > 1); pass allow_extrapolation=True / --allow-extrapolation to allow it"
            )
        return Recipe(method, lam, tuple(float(w) for w in weights), extrapolation)
    if num_models != 2:
        raise UserError(f"{method} merges exactly two models, got {num_models}")
    if has_base:
        raise UserError(f"--base is only used by task_arithmetic, not by {method}")
    if weights is not None:
        raise UserError(f"--weights is only used by task_arithmetic; {method} takes --lam")
    if lam is None:
        raise UserError(f"{method} needs lam (--lam)")
    extrapolation = not 0.0 <= lam <= 1.0
    if extrapolation and not allow_extrapolation:
        raise UserError(
            f"lam={lam:g} is outside [0, 1] (extrapolation); pass allow_extrapolation=True / --allow-extrapolation to allow it"
        )
    return Recipe(method, float(lam), None, extrapolation)


def _merge_tensor(recipe: Recipe, tensors: Sequence[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
    """Merge one tensor of every model; non-float tensors were checked equal and are copied.

    Half-precision types are computed in float32 and rounded once; float32/64 are computed in their
    own dtype, where `.to` is free, so memory stays at the inputs plus the output.
    """
    first = tensors[0]
    if not first.is_floating_point():
        return first.clone()
    compute = first.dtype if first.dtype.itemsize >= 4 else torch.float32
    wide = [t.to(compute) for t in tensors]
    if recipe.method == "lerp":
        merged = lerp(wide[0], wide[1], recipe.lam)
    elif recipe.method == "slerp":
        merged = slerp(wide[0], wide[1], recipe.lam)
    else:
        merged = task_arithmetic(base.to(compute), wide, recipe.weights)
    return merged.to(first.dtype)


# ---------------------------------------------------------------------------------------------
# Validation shared by state dicts and checkpoints: everything is checked before any arithmetic.


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_same_tensors(specs: Mapping[str, Mapping[str, tuple[tuple[int, ...], torch.dtype]]]) -> None:
    """specs: label -> tensor name -> (shape, dtype). Raise on the first difference from the first label."""
    (ref_label, ref), *others = specs.items()
    for label, spec in others:
        for name in ref:
            if name not in spec:
                raise UserError(f"tensor {name} is in {ref_label} but not in {label}")
        for name in spec:
            if name not in ref:
                raise UserError(f"tensor {name} is in {label} but not in {ref_label}")
        for name, (shape, dtype) in ref.items():
            other_shape, other_dtype = spec[name]
            if tuple(shape) != tuple(other_shape):
                raise UserError(
                    f"tensor {name} has shape {list(shape)} in {ref_label} but {list(other_shape)} in {label}"
                )
            if dtype != other_dtype:
                raise UserError(
                    f"tensor {name} has dtype {_dtype_name(dtype)} in {ref_label} but {_dtype_name(other_dtype)} in {label}"
                )


def _check_equal_non_float(name: str, tensors: Mapping[str, torch.Tensor]) -> None:
    (ref_label, ref), *others = tensors.items()
    for label, tensor in others:
        if not torch.equal(ref, tensor):
            raise UserError(
                f"non-float tensor {name} differs between {ref_label} and {label}; "
                "integer/bool tensors cannot be interpolated and must be equal"
            )


def _labels(num_models: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(num_models)]


def merge_state_dicts(
    models: Sequence[Mapping[str, torch.Tensor]],
    *,
    method: str = "lerp",
    lam: float | None = None,
    weights: Sequence[float] | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
    allow_extrapolation: bool = False,
) -> dict[str, torch.Tensor]:
    """Merge in-memory state dicts (models[0] = theta_q, models[1] = theta_d for the paper's lerp)."""
    recipe = make_recipe(
        method,
        len(models),
        lam=lam,
        weights=weights,
        has_base=base is not None,
        allow_extrapolation=allow_extrapolation,
    )
    by_label = dict(zip(_labels(len(models)), models))
    if base is not None:
        by_label["base"] = base
    _check_same_tensors(
        {label: {name: (tuple(t.shape), t.dtype) for name, t in sd.items()} for label, sd in by_label.items()}
    )
    for name, tensor in models[0].items():
        if not tensor.is_floating_point():
            _check_equal_non_float(name, {label: sd[name] for label, sd in by_label.items()})
    return {
        name: _merge_tensor(recipe, [sd[name] for sd in models], None if base is None else base[name])
        for name in models[0]
    }


# ---------------------------------------------------------------------------------------------
# Safetensors, read and written by offset so that only one tensor per file is in memory at a time.
# (mmap-based loading would touch pages that then count in RSS; plain reads into fresh buffers don't.)


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: its file, absolute byte offset, dtype and shape."""

    name: str
    file: Path
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def read_safetensors_header(path: Path, label: str) -> tuple[list[TensorRef], dict]:
    """Parse and check a safetensors header: tensors in file order, and the __metadata__ dict.

    The format is: u64 little-endian header length N, N bytes of JSON, then the tensor data, which
    must be covered exactly, without holes, by the entries' data_offsets. A file that is shorter
    than its header promises is reported as truncated.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise UserError(f"{label}: {path} is not a safetensors file (only {size} bytes; truncated?)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise UserError(
                f"{label}: {path} is truncated or not a safetensors file "
                f"(header length {header_len} but the file has {size} bytes)"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{label}: {path} has a corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise UserError(f"{label}: {path} has a corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    refs = []
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{label}: {path} has a corrupt or unsupported header entry for tensor {name}"
            ) from None
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise UserError(
                f"{label}: {path}: tensor {name} has {end - begin} bytes, expected {nbytes} for its shape"
            )
        refs.append(TensorRef(name, path, data_start + begin, nbytes, dtype, shape))
    refs.sort(key=lambda ref: ref.offset)
    position = data_start
    for ref in refs:
        if ref.offset != position:
            raise UserError(f"{label}: {path} is corrupt: tensor data is not contiguous at tensor {ref.name}")
        position += ref.nbytes
    if position > size:
        raise UserError(
            f"{label}: {path} is truncated: its header describes {position - data_start} bytes of tensor data "
            f"but the file holds only {size - data_start}"
        )
    if position < size:
        raise UserError(
            f"{label}: {path} is corrupt: {size - position} unexpected bytes after the tensor data"
        )
    return refs, metadata


def read_tensor(handle, ref: TensorRef) -> torch.Tensor:
    """Read one tensor into a fresh buffer (handle: the file opened unbuffered, 'rb', buffering=0)."""
    buffer = torch.empty(ref.nbytes, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    handle.seek(ref.offset)
    done = 0
    while done < ref.nbytes:
        count = handle.readinto(view[done:])
        if not count:
            raise UserError(f"{ref.file} was truncated while reading tensor {ref.name}")
        done += count
    return buffer.view(ref.dtype).reshape(ref.shape)


def write_safetensors_streaming(
    path: Path,
    layout: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensors are produced one at a time.

    The header only needs names, dtypes and shapes, so it is written first and each tensor is
    appended as soon as `produce(name)` returns it: memory holds one output tensor at a time.
    """
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    position = 0
    for name, dtype, shape in layout:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [position, position + nbytes],
        }
        position += nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)  # the reference writer aligns tensor data to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for name, dtype, shape in layout:
            tensor = produce(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(
                    f"produced {name} as {tensor.dtype} {list(tensor.shape)}, layout says {dtype} {list(shape)}"
                )
            handle.write(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))


# ---------------------------------------------------------------------------------------------
# Checkpoint directories: config.json + model.safetensors, or shards + model.safetensors.index.json.


@dataclass
class Checkpoint:
    """An opened (not loaded) checkpoint directory: its config and where each tensor lives."""

    label: str
    path: Path
    config: dict
    shard_files: list[str]  # weight file names in the directory, in shard order
    tensors: dict[str, TensorRef]  # in shard order, then file order
    metadata: dict  # the first shard's safetensors __metadata__
    index: dict | None  # model.safetensors.index.json, for sharded checkpoints

    @functools.cached_property
    def weights_sha256(self) -> str:
        """The project's weight identity (checkpoint.state_sha256, as in generate/train manifests),
        computed one tensor at a time; cached."""
        with ExitStack() as stack:
            return state_sha256(_LazyState(self, _open_weight_files(stack, [self])))


class _LazyState(Mapping):
    """A checkpoint's tensors as a read-only mapping that reads each tensor when it is looked up."""

    def __init__(self, checkpoint: Checkpoint, handles: Mapping[Path, object]):
        self.checkpoint, self.handles = checkpoint, handles

    def __getitem__(self, name: str) -> torch.Tensor:
        ref = self.checkpoint.tensors[name]
        return read_tensor(self.handles[ref.file], ref)

    def __iter__(self):
        return iter(self.checkpoint.tensors)

    def __len__(self) -> int:
        return len(self.checkpoint.tensors)


def open_checkpoint(path: str | os.PathLike, label: str) -> Checkpoint:
    """Read config.json and the safetensors headers of a checkpoint directory; no tensor is loaded."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{label} is not a model checkpoint: {path} is not a directory")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise UserError(f"{label} is not a model checkpoint: no {CONFIG_FILE} in {path}")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{label}: {config_path} is not valid JSON ({err})") from None
    index = None
    if (path / INDEX_FILE).is_file():
        try:
            index = json.loads((path / INDEX_FILE).read_text())
            weight_map = dict(index["weight_map"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"{label}: {path / INDEX_FILE} is not a valid safetensors index ({err})"
            ) from None
        shard_files = sorted(set(weight_map.values()))
        for shard in shard_files:  # the output reuses these names: they must stay inside the dir
            if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
                raise UserError(f"{label}: {INDEX_FILE} names an invalid shard file {shard!r}")
    elif (path / WEIGHTS_FILE).is_file():
        weight_map = None
        shard_files = [WEIGHTS_FILE]
    else:
        raise UserError(f"{label} is not a model checkpoint: no {WEIGHTS_FILE} or {INDEX_FILE} in {path}")
    tensors: dict[str, TensorRef] = {}
    metadata: dict = {}
    for shard in shard_files:
        if not (path / shard).is_file():
            raise UserError(f"{label}: shard {shard} listed in {path / INDEX_FILE} is missing")
        refs, shard_metadata = read_safetensors_header(path / shard, label)
        metadata = metadata or shard_metadata
        for ref in refs:
            if ref.name in tensors:
                raise UserError(f"{label}: tensor {ref.name} is stored twice in {path}")
            if weight_map is not None and weight_map.get(ref.name) != shard:
                raise UserError(
                    f"{label}: {INDEX_FILE} does not place tensor {ref.name} in {shard}, where it is stored"
                )
            tensors[ref.name] = ref
    if weight_map is not None and len(weight_map) != len(tensors):
        missing = next(name for name in weight_map if name not in tensors)
        raise UserError(f"{label}: {INDEX_FILE} lists tensor {missing} but no shard holds it")
    return Checkpoint(label, path, config, shard_files, tensors, metadata, index)


def architecture_config(config: dict) -> dict:
    """config.json without the fields that record provenance rather than architecture."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in NON_ARCHITECTURE_KEYS}
        return value

    stripped = strip(config)
    if isinstance(stripped.get("musicgen_cfg"), dict):
        stripped["musicgen_cfg"] = {
            k: v for k, v in stripped["musicgen_cfg"].items() if k not in PROVENANCE_KEYS
        }
    return stripped


def _first_config_difference(a, b, key: str = "") -> tuple[str, str, str] | None:
    """(key path, value in a, value in b) of the first difference, in sorted key order."""
    if isinstance(a, dict) and isinstance(b, dict):
        for name in sorted(set(a) | set(b)):
            path = f"{key}.{name}" if key else name
            if name not in a:
                return path, "absent", json.dumps(b[name])
            if name not in b:
                return path, json.dumps(a[name]), "absent"
            found = _first_config_difference(a[name], b[name], path)
            if found:
                return found
        return None
    return None if a == b else (key, json.dumps(a), json.dumps(b))


def check_compatible(checkpoints: Sequence[Checkpoint]) -> None:
    """Same architecture config, same tensor names/shapes/dtypes, equal non-float tensors."""
    ref = checkpoints[0]
    for other in checkpoints[1:]:
        found = _first_config_difference(architecture_config(ref.config), architecture_config(other.config))
        if found:
            key, ref_value, other_value = found
            raise UserError(
                f"different architectures: config.json key {key} is {ref_value} in {ref.label} but {other_value} in {other.label}"
            )
    _check_same_tensors(
        {ckpt.label: {name: (r.shape, r.dtype) for name, r in ckpt.tensors.items()} for ckpt in checkpoints}
    )
    non_float = [name for name, r in ref.tensors.items() if not r.dtype.is_floating_point]
    if non_float:
        with ExitStack() as stack:
            handles = _open_weight_files(stack, checkpoints)
            for name in non_float:
                _check_equal_non_float(
                    name,
                    {
                        c.label: read_tensor(handles[c.tensors[name].file], c.tensors[name])
                        for c in checkpoints
                    },
                )


def _open_weight_files(stack: ExitStack, checkpoints: Sequence[Checkpoint]) -> dict[Path, object]:
    return {
        ckpt.path / shard: stack.enter_context(open(ckpt.path / shard, "rb", buffering=0))
        for ckpt in checkpoints
        for shard in ckpt.shard_files
    }


# ---------------------------------------------------------------------------------------------
# Streaming merge of checkpoint directories.


@dataclass(frozen=True)
class _Sources:
    """Opened and validated inputs: the models in order, then the optional base."""

    models: list[Checkpoint]
    base: Checkpoint | None

    @property
    def all(self) -> list[Checkpoint]:
        return self.models + ([self.base] if self.base else [])


def _open_sources(models: Sequence[str | os.PathLike], base: str | os.PathLike | None) -> _Sources:
    sources = _Sources(
        [open_checkpoint(path, label) for path, label in zip(models, _labels(len(models)))],
        open_checkpoint(base, "base") if base is not None else None,
    )
    check_compatible(sources.all)
    return sources


def _check_destination(out: Path, sources: _Sources, overwrite: bool) -> None:
    for ckpt in sources.all:
        if out.resolve() == ckpt.path.resolve():
            raise UserError(f"output {out} is the input checkpoint {ckpt.label}; choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output {out} already exists; pass overwrite=True / --overwrite to replace it")


def _write_merged(sources: _Sources, recipe: Recipe, out: Path) -> Path:
    """Stream the merge into a temp dir beside `out`, which then replaces `out` in one rename."""
    first = sources.models[0]
    with atomic_directory(out) as staging, ExitStack() as stack:
        handles = _open_weight_files(stack, sources.all)

        def produce(name: str) -> torch.Tensor:
            tensors = [read_tensor(handles[c.tensors[name].file], c.tensors[name]) for c in sources.models]
            base = sources.base
            base_tensor = read_tensor(handles[base.tensors[name].file], base.tensors[name]) if base else None
            return _merge_tensor(recipe, tensors, base_tensor)

        for shard in first.shard_files:  # shard the output exactly like the first model
            layout = [(r.name, r.dtype, r.shape) for r in first.tensors.values() if r.file.name == shard]
            write_safetensors_streaming(staging / shard, layout, produce, first.metadata)
        if first.index is not None:
            index = dict(first.index)
            index["metadata"] = {
                **(first.index.get("metadata") or {}),
                "total_size": sum(r.nbytes for r in first.tensors.values()),
            }
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        _copy_non_weight_files(first, staging)
        sources_record = [
            {
                "role": ckpt.label,
                "path": str(ckpt.path.resolve()),
                "weights_sha256": ckpt.weights_sha256,
            }
            for ckpt in sources.all
        ]
        merge_record = {
            "method": recipe.method,
            "lam": recipe.lam,
            "weights": list(recipe.weights) if recipe.weights is not None else None,
            "extrapolation": recipe.extrapolation,
        }
        config = merged_config(sources.models, merge_record | {"sources": sources_record})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        write_hub_files(staging)  # generation config (no CFG, this merge's provenance), processor, model card
        output = open_checkpoint(staging, "output")  # re-reading the headers also checks what was written
        manifest = merge_record | {
            "sources": sources_record,
            "weights_sha256": output.weights_sha256,
            "command": shlex.join(sys.argv),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def merged_config(models: Sequence[Checkpoint], merge_record: dict) -> dict:
    """The first model's config.json, with its musicgen_cfg block made true of the merge: `beta` becomes
    the list of the models' betas (in merge order) when they differ, other provenance the models
    disagree on (training) is dropped, what they share (base_model, teacher gamma, ...) is kept, and
    `lambda` (read by `generate` manifests) and `merge` describe this merge."""
    config = copy.deepcopy(models[0].config)
    blocks = [m.config.get("musicgen_cfg") or {} for m in models]
    block = config.setdefault("musicgen_cfg", {})
    betas = [other.get("beta") for other in blocks]
    for key in PROVENANCE_KEYS & set(block):
        if any(other.get(key) != block[key] for other in blocks[1:]):
            del block[key]
    if len(set(map(json.dumps, betas))) > 1:
        block["beta"] = betas
    block["lambda"] = merge_record["lam"]
    block["merge"] = merge_record
    return config


def _copy_non_weight_files(ckpt: Checkpoint, destination: Path) -> None:
    """Tokenizer, processor and generation config come from the first model (the generation config is then
    rewritten by write_hub_files); its weights, config (rewritten by merged_config), model card, source-only
    files and training state (a checkpoint's optimizer and trainer state) do not."""
    skip = set(ckpt.shard_files) | {INDEX_FILE, CONFIG_FILE, MODEL_CARD} | SOURCE_ONLY_FILES | TRAINING_STATE_FILES
    for entry in ckpt.path.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir():
            shutil.copytree(entry, destination / entry.name)
        else:
            shutil.copy2(entry, destination / entry.name)


def merge_checkpoints(
    models: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    method: str = "lerp",
    lam: float | None = None,
    weights: Sequence[float] | None = None,
    base: str | os.PathLike | None = None,
    allow_extrapolation: bool = False,
    overwrite: bool = False,
) -> Path:
    """Merge checkpoint directories into `out`, streaming tensor by tensor; returns `out`.

    Everything (parameters, configs, tensor names/shapes/dtypes, destination) is validated before
    the first tensor is computed. `out` gets the first model's sharding and non-weight files plus a
    merge_manifest.json (sources and their sha256, method, lam/weights, extrapolation, command).
    """
    recipe = make_recipe(
        method,
        len(models),
        lam=lam,
        weights=weights,
        has_base=base is not None,
        allow_extrapolation=allow_extrapolation,
    )
    out = Path(out)
    sources = _open_sources(models, base)
    _check_destination(out, sources, overwrite)
    return _write_merged(sources, recipe, out)


def sweep_dir_name(lam: float) -> str:
    return f"lam_{lam:g}"


def sweep_checkpoints(
    models: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    lams: Iterable[float],
    *,
    method: str = "lerp",
    base: str | os.PathLike | None = None,
    allow_extrapolation: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """One merge per lam, written to out/lam_<lam>; inputs are opened, checked and hashed once.
    For task_arithmetic with two models, lam means weights (1 - lam, lam)."""
    lams = list(lams)
    if not lams:
        raise UserError("the sweep needs at least one lam")
    if len({sweep_dir_name(lam) for lam in lams}) != len(lams):
        raise UserError("the sweep lists the same lam twice")
    recipes = [
        make_recipe(
            method, len(models), lam=lam, has_base=base is not None, allow_extrapolation=allow_extrapolation
        )
        for lam in lams
    ]
    out = Path(out)
    sources = _open_sources(models, base)
    destinations = [out / sweep_dir_name(lam) for lam in lams]
    for destination in destinations:
        _check_destination(destination, sources, overwrite)
    return [_write_merged(sources, recipe, dest) for recipe, dest in zip(recipes, destinations)]


# ---------------------------------------------------------------------------------------------
# Serving: move a live module along the lerp path without reloading anything.


class LiveMerge:
    """Holds theta_q and theta_d next to a live module and rewrites its weights to theta(lam) in place.

    Both state dicts are copied once to each parameter's device and dtype (so memory is 3x the
    merged weights); `set_lambda` then writes torch.lerp(q, d, lam) into the existing parameter
    storage: no allocation, no reload, and anything holding the parameters (optimizers, compiled
    graphs, the sampler) keeps seeing them. Entries of the state dicts may be parameters or float
    buffers of the module; every parameter of the module must be covered. Not thread-safe: call
    `set_lambda` between generations, never while a forward pass is reading the weights.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        quality: Mapping[str, torch.Tensor],
        diversity: Mapping[str, torch.Tensor],
        lam: float = 0.0,
        allow_extrapolation: bool = False,
    ):
        _check_same_tensors(
            {
                "quality": {n: (tuple(t.shape), t.dtype) for n, t in quality.items()},
                "diversity": {n: (tuple(t.shape), t.dtype) for n, t in diversity.items()},
            }
        )
        targets = {name: t.detach() for name, t in module.state_dict(keep_vars=True).items()}  # share storage
        for name, _ in module.named_parameters():
            if name not in quality:
                raise UserError(f"module parameter {name} is missing from the quality/diversity state dicts")
        for name, q in quality.items():  # check everything before the module is touched
            target = targets.get(name)
            if target is None:
                raise UserError(
                    f"tensor {name} of the state dicts is not a parameter or buffer of the module"
                )
            if tuple(target.shape) != tuple(q.shape):
                raise UserError(
                    f"tensor {name} has shape {list(q.shape)} in the state dicts but {list(target.shape)} in the module"
                )
            if target.is_floating_point() != q.is_floating_point():
                raise UserError(
                    f"tensor {name} is {_dtype_name(q.dtype)} in the state dicts but {_dtype_name(target.dtype)} in the module"
                )
            if not q.is_floating_point():
                _check_equal_non_float(name, {"quality": q, "diversity": diversity[name]})
        self._triples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for name, q in quality.items():
            target = targets[name]
            if not q.is_floating_point():  # integer/bool entries cannot move with lam: set once
                target.copy_(q)
                continue
            place = {"device": target.device, "dtype": target.dtype}
            # copy=True: the held endpoints must never alias the caller's tensors (which may be the
            # module's own weights, e.g. its state_dict() as theta_q), yet cost only one copy each.
            self._triples.append((target, q.to(**place, copy=True), diversity[name].to(**place, copy=True)))
        self.allow_extrapolation = allow_extrapolation
        self._lam: float | None = None
        self.set_lambda(lam)

    @property
    def lam(self) -> float:
        """The lam the module's weights currently hold."""
        return self._lam

    @torch.no_grad()
    def set_lambda(self, lam: float) -> None:
        """Rewrite the module's weights to (1 - lam) theta_q + lam theta_d; a no-op if lam is unchanged."""
        make_recipe("lerp", 2, lam=lam, allow_extrapolation=self.allow_extrapolation)
        lam = float(lam)
        if lam == self._lam:
            return
        for target, q, d in self._triples:
            torch.lerp(q, d, lam, out=target)
        self._lam = lam
