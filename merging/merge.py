"""Weight merging of checkpoint directories: theta(lam) = (1 - lam) theta_q + lam theta_d, the paper's
deployment-time knob.

theta_q is the beta = 0 (quality) model, theta_d the beta = 15 (diversity) model, both finetuned from
the same base theta_0, so their weights can be mixed tensor by tensor (the rules: merging/methods.py).
`merge_checkpoints` / `sweep_checkpoints` merge checkpoint directories, streamed tensor by tensor
(memory stays at one output shard and a few input tensors, whatever the model size) and written
atomically; the file handling (safetensors reads, sharded writes) is musicgen_cfg/checkpoint.py's.
A live module is merged in place by merging/live.py.

Command line: `musicgen-cfg merge --models Q D --lam 0.5 --out DIR` (merging/cli.py).
"""

import copy
import json
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from merging.methods import (
    Recipe,
    check_equal_non_float,
    check_same_tensors,
    make_recipe,
    merge_tensor,
    model_labels,
)
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
    check_same_tensors(
        {ckpt.label: {name: (r.shape, r.dtype) for name, r in ckpt.tensors.items()} for ckpt in checkpoints}
    )
    for name, info in ref.tensors.items():
        if not info.dtype.is_floating_point:
            check_equal_non_float(name, {c.label: c.read(name) for c in checkpoints})


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
        [open_checkpoint(path, label) for path, label in zip(models, model_labels(len(models)))],
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
            return merge_tensor(recipe, [c.read(name) for c in sources.models], base)

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
