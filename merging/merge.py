"""Weight merging, the paper's deployment-time knob: theta(lam) = (1 - lam) theta_q + lam theta_d.

theta_q is the beta = 0 (quality) model, theta_d the beta = 15 (diversity) model, both finetuned from
the same base theta_0, so their weights can be mixed tensor by tensor. This file holds the whole idea:

- the per-tensor rules `lerp` (the paper), `slerp` and `task_arithmetic` (relative to theta_0);
- `merge_state_dicts` for in-memory state dicts;
- `merge_checkpoints` / `sweep_checkpoints` for checkpoint directories, streamed tensor by tensor
  (memory stays at one output shard and a few input tensors, whatever the model size) and written
  atomically; the file handling (safetensors reads, sharded writes) is musicgen_cfg/checkpoint.py's;
- `LiveMerge`, which rewrites a live module's parameters in place when a serving slider moves lam.

Command line: `musicgen-cfg merge --models Q D --lam 0.5 --out DIR` (merging/cli.py).
"""

import copy
import json
import math
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from musicgen_cfg.checkpoint import (
    CONFIG_NAME,
    MAX_SHARD_BYTES,
    WEIGHTS_INDEX_NAME,
    Checkpoint,
    atomic_directory,
    open_checkpoint,
    write_sharded,
)
from musicgen_cfg.errors import UserError
from musicgen_cfg.export import MODEL_CARD, TRAINING_STATE_FILES, write_hub_files

METHODS = ("lerp", "slerp", "task_arithmetic")

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
# Checkpoint directories (opened by musicgen_cfg.checkpoint): can they be merged?


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
    for name, info in ref.tensors.items():
        if not info.dtype.is_floating_point:
            _check_equal_non_float(name, {c.label: c.read(name) for c in checkpoints})


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


def _write_merged(sources: _Sources, recipe: Recipe, out: Path, max_shard_bytes: int) -> Path:
    """Stream the merge into a temp dir beside `out`, which then replaces `out` in one rename."""
    first = sources.models[0]
    with atomic_directory(out) as staging:

        def produce(name: str) -> torch.Tensor:
            base = sources.base.read(name) if sources.base else None
            return _merge_tensor(recipe, [c.read(name) for c in sources.models], base)

        # The first model's tensor order and shard boundaries, with shards cut at max_shard_bytes.
        groups = [[i for i in first.tensors.values() if i.file.name == shard] for shard in first.shard_files]
        write_sharded(staging, groups, produce, first.metadata, max_shard_bytes)
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
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
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
    skip = set(ckpt.shard_files) | {WEIGHTS_INDEX_NAME, CONFIG_NAME, MODEL_CARD} | SOURCE_ONLY_FILES | TRAINING_STATE_FILES
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
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Merge checkpoint directories into `out`, streaming tensor by tensor; returns `out`.

    Everything (parameters, configs, tensor names/shapes/dtypes, destination) is validated before
    the first tensor is computed. `out` gets the first model's non-weight files and its sharding, with
    shards cut at max_shard_bytes (memory holds one output shard and a few input tensors), plus a
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
    return _write_merged(sources, recipe, out, max_shard_bytes)


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
    max_shard_bytes: int = MAX_SHARD_BYTES,
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
    created = not out.exists()
    try:
        return [_write_merged(sources, recipe, dest, max_shard_bytes) for recipe, dest in zip(recipes, destinations)]
    except BaseException:
        # Input tensors are checked as they stream in (a NaN one fails the first merge): a sweep that fails
        # there leaves no empty OUT behind; merges finished before a later failure stay, each complete.
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


# ---------------------------------------------------------------------------------------------
# Serving: move a live module along the lerp path without reloading anything.


class LiveMerge:
    """Holds theta_q and theta_d next to a live module and rewrites its weights to theta(lam) in place.

    The endpoint tensors are held on each parameter's device and dtype: one already there is held as
    it is (handed over, not copied: the caller must not modify it afterwards), one elsewhere is
    converted once, and one that shares memory with the module's weights (e.g. the module's own
    state_dict() as theta_q) is copied. So memory is 3x the merged weights, not 3x plus the caller's
    endpoints. `set_lambda` then writes torch.lerp(q, d, lam) into the existing parameter
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
        live = {t.untyped_storage().data_ptr() for t in targets.values()}

        def held(tensor: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # set_lambda writes the module's weights, so an endpoint must never share their memory
            tensor = tensor.detach().to(device=target.device, dtype=target.dtype)
            return tensor.clone() if tensor.untyped_storage().data_ptr() in live else tensor

        self._triples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for name, q in quality.items():
            target = targets[name]
            if not q.is_floating_point():  # integer/bool entries cannot move with lam: set once
                target.copy_(q)
                continue
            self._triples.append((target, held(q, target), held(diversity[name], target)))
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
