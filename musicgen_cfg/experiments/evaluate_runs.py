"""Reading `musicgen-cfg generate` runs for evaluation: the manifest's entries, checked, and the audio and codes
they name, grouped by prompt; which world a run belongs to; the run directories a path stands for.

    musicgen-cfg evaluate runs/base_g3 runs/quality       # each RUN_DIR/manifest.jsonl is read here

A run is foreign input (any folder a user points at): every field, file, shape and code range is checked,
and what is wrong is one UserError naming the file.
"""

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgen_cfg.checkpoint import read_json
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.generate import MANIFEST, load_manifest

# The manifest fields evaluation reads (written by musicgen_cfg/experiments/generate.py) and their types.
REQUIRED_FIELDS = {"file": str, "codes_file": str, "prompt": str, "prompt_index": int, "seed": int, "model": str,
                   "model_sha256": str, "sampling": dict, "sample_rate": int, "wall_time_s": (int, float)}


@dataclass
class Sample:
    entry: dict
    audio: np.ndarray  # float32 [samples], mono
    codes: np.ndarray  # int64 [K, T]


def read_entries(run_dir: Path) -> list[dict]:
    """The run's manifest entries (one per item), after checking them and the files they name."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    if not (run_dir / MANIFEST).is_file():
        raise UserError(f"{run_dir} has no {MANIFEST}: not a `musicgen-cfg generate` run (or an empty one)")
    latest = {}
    for number, entry in enumerate(load_manifest(run_dir), 1):
        check_entry(entry, f"{run_dir / MANIFEST}:{number}")
        # A resumed run may list an item twice (its file was lost and regenerated): the last entry wins.
        latest[(entry["prompt_index"], entry["seed"])] = entry
    entries = sorted(latest.values(), key=lambda e: (e["prompt_index"], e["seed"]))
    if not entries:
        raise UserError(f"{run_dir}/{MANIFEST} lists no generations")
    settings = {(e["model_sha256"], json.dumps(e["sampling"], sort_keys=True)) for e in entries}
    if len(settings) > 1:
        raise UserError(f"{run_dir} mixes {len(settings)} models or sampling settings; evaluate one per directory")
    rates = {}
    for entry in entries:
        for name in (entry["file"], entry["codes_file"]):
            if not (run_dir / name).is_file():
                raise UserError(f"{run_dir}/{MANIFEST} lists {name}, which is missing")
        rates.setdefault(_audio_rate(run_dir / entry["file"], entry), entry["file"])
    if len(rates) > 1:
        (rate_a, file_a), (rate_b, file_b) = list(rates.items())[:2]
        raise UserError(f"{run_dir} mixes sample rates: {rate_a} Hz ({file_a}) and {rate_b} Hz ({file_b})")
    return entries


def read_samples(run_dir: Path, entries: list[dict], codes_shape: tuple[int, int] | None
                 ) -> dict[int, list[Sample]]:
    """Audio and codes of the entries, grouped by prompt index. Every codes file has `codes_shape`'s
    (codebooks, cardinality) (the world's: WorldMetrics.codes_shape), or, when None, the codebooks of the first."""
    groups, shape = defaultdict(list), codes_shape
    for entry in entries:
        codes = _read_codes(run_dir / entry["codes_file"], shape)
        shape = shape or (codes.shape[0], None)
        groups[entry["prompt_index"]].append(Sample(entry, _read_audio(run_dir / entry["file"]), codes))
    return dict(sorted(groups.items()))


def read_cached(path: Path) -> dict | None:
    """A previous metrics.json, or None when there is none to trust: evaluate wrote it, but it lies in the
    user's folder, so one that is not UTF-8 JSON or not an object (a list) is recomputed and replaced."""
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return previous if isinstance(previous, dict) else None


def check_entry(entry, where: str):
    """One manifest entry has every field evaluation reads, with the right type."""
    if not isinstance(entry, dict):
        raise UserError(f"{where}: malformed entry, expected a JSON object")
    for name, kind in REQUIRED_FIELDS.items():
        if name not in entry:
            raise UserError(f"{where}: malformed entry, missing field {name!r}")
        if not isinstance(entry[name], kind) or isinstance(entry[name], bool):
            raise UserError(f"{where}: malformed entry, field {name!r} has the wrong type")
    if not isinstance(entry["sampling"].get("guidance_scale"), (int, float)):
        raise UserError(f"{where}: malformed entry, sampling has no numeric 'guidance_scale'")


def _read_codes(path: Path, shape: tuple[int, int | None] | None = None) -> np.ndarray:
    """Codes [K, T] of one file (foreign input: any .npy may sit there), as int64. One UserError for a file
    that is no array, not [codebooks, frames], has no codes, holds no integers (float codes would be cast
    silently), negative codes, or, with `shape` = (K, cardinality or None), other than K codebooks or a code
    >= the cardinality: such codes would be judged as music or fail deep inside a judge."""
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"cannot read codes file {path}: {(str(err).splitlines() or [type(err).__name__])[0]}") from None
    if not isinstance(codes, np.ndarray) or codes.ndim != 2:
        raise UserError(f"codes file {path} has shape {list(np.shape(codes))}, expected [codebooks, frames]")
    if codes.dtype.kind not in "iu":
        raise UserError(f"codes file {path} holds {codes.dtype} values, expected integer codes")
    if 0 in codes.shape:
        raise UserError(f"codes file {path} has {codes.shape[0]} codebooks x {codes.shape[1]} frames: no codes")
    if shape is not None and codes.shape[0] != shape[0]:
        raise UserError(f"codes file {path} has {codes.shape[0]} codebooks; this run's model has {shape[0]}")
    high = shape[1] if shape is not None else None
    if codes.min() < 0 or (high is not None and codes.max() >= high):
        raise UserError(f"codes file {path} holds codes outside [0, {high})" if high is not None
                        else f"codes file {path} holds negative codes")
    return codes.astype(np.int64)


def _audio_rate(path: Path, entry: dict) -> int:
    import soundfile as sf

    try:
        rate = sf.info(str(path)).samplerate
    except RuntimeError as err:
        raise UserError(f"cannot read audio file {path}: {str(err).splitlines()[0]}") from None
    if rate != entry["sample_rate"]:
        raise UserError(f"{path} is at {rate} Hz but its manifest entry says {entry['sample_rate']} Hz")
    return rate


def _read_audio(path: Path) -> np.ndarray:
    import soundfile as sf

    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def detect_world(run_dir: Path, entry: dict, world: str) -> str:
    """'default' when the run's model is a symbolic-codec checkpoint, 'real' for real MusicGen."""
    from musicgen_cfg.model import is_symbolic_config, looks_like_hub_id

    if world != "auto":
        return world
    source = str(entry["model"])
    config = Path(source) / "config.json"
    if config.is_file():
        return "default" if is_symbolic_config(read_json(config)) else "real"
    if looks_like_hub_id(source):
        return "real"  # a hub id; the default world only exists as local checkpoints
    raise UserError(f"{run_dir}: cannot tell which world model {source} belongs to (its config.json is gone); "
                    f"pass --world default or --world real")




def expand_runs(paths: list[str]) -> list[Path]:
    """Run directories: each path itself when it has a manifest, else its subdirectories that have one
    (a demo session folder keeps one per model and sampling setting)."""
    runs = []
    for path in map(Path, paths):
        nested = sorted(p.parent for p in path.glob(f"*/{MANIFEST}")) if path.is_dir() else []
        runs += nested if nested and not (path / MANIFEST).is_file() else [path]
    return runs
