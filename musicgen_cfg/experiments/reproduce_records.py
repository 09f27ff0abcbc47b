"""Evaluation records of `musicgen-cfg reproduce`: each point's evaluated metrics, kept in OUT/records/ (commit them).

    musicgen-cfg reproduce --config configs/reproduce.yaml --out results   # reads and writes results/records/*.json

A sweep of 3 seeds x 4 betas takes longer on the CPU than one session, and the trained models' weights are
not committed (only seed 0's endpoints ship). A record keeps what a point's numbers are: the `evaluate`
result of its run (metrics, per-prompt values, prompts, the scorers' identities). The next run reuses it:
a point with a valid record is neither generated nor evaluated again, and a trained model every point of
which is recorded (its beta point, and for an endpoint every LERP point of its seed) is neither trained
nor merged again.

A record is valid while its key is unchanged (`record_key`): the model's identity (`ModelIdentities`: a
shipped or given model by its weight files' sha256; a model this pipeline trains by its recipe, i.e.
the training config file's sha256, the overrides and the base's identity; a merge by lambda and its
endpoints' identities), the point's sampling settings, the prompts and the evaluation's components (the
scorers' weights, bootstrap, seed). What the key cannot see (a change in the training code itself)
needs the records deleted by hand: `rm -r OUT/records`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from musicgen_cfg.checkpoint import file_sha256, read_json, weight_file_hashes, write_json
from musicgen_cfg.errors import UserError

RECORDS_DIR = "records"
RECORD_VERSION = 1


def weights_identity(spec: str) -> dict:
    """A model that exists (shipped, a directory or a hub id) by its files: config.json and weights sha256."""
    from musicgen_cfg.model import looks_like_hub_id, resolve_spec

    path = Path(resolve_spec(spec))
    if not (path / "config.json").is_file():
        if looks_like_hub_id(spec):
            return {"hub": spec}  # its files are the hub's, identified by the id alone
        raise UserError(f"model {spec!r}: no config.json in {path}")
    return {"config_sha256": file_sha256(path / "config.json"), **weight_file_hashes(path)}


# Where a run writes is not what it trains: the same recipe under another OUT keeps its records.
LOCATION_FLAGS = ("--out", "--export")


def recipe_identity(train_config: str, overrides: list[str], base: dict) -> dict:
    """A model this pipeline trains, by what trains it (so it is the same before and after its weights exist).

    overrides: `--key value` pairs; those of LOCATION_FLAGS are left out.
    """
    pairs = [overrides[i : i + 2] for i in range(0, len(overrides), 2)]
    kept = [item for flag, value in pairs if flag not in LOCATION_FLAGS for item in (flag, value)]
    return {"train_config_sha256": file_sha256(train_config), "overrides": kept, "base": base}


def lerp_identity(lam: float, quality: dict, diversity: dict) -> dict:
    return {"lerp": lam, "quality": quality, "diversity": diversity}


def record_key(model: dict, sampling: dict, prompts: list[str], evaluation: dict) -> str:
    """sha256 of everything a point's evaluated numbers depend on (the module docstring)."""
    payload = {"version": RECORD_VERSION, "model": model, "sampling": sampling, "prompts": prompts,
               "evaluation": evaluation}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Records:
    """OUT/records/<run name>.json: {"key", "model", "result"} where result is the run's `evaluate` output."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, run_name: str) -> Path:
        return self.directory / f"{run_name}.json"

    def read(self, run_name: str, key: str) -> dict | None:
        """The recorded evaluate result of a run, or None when there is none or its key differs (stale)."""
        path = self.path(run_name)
        if not path.exists():
            return None
        record = read_json(path, label="reproduce record (delete it to redo the point)")
        if not isinstance(record.get("result"), dict) or not isinstance(record.get("key"), str):
            raise UserError(f"reproduce record {path} lacks its key or result; delete it to redo the point")
        return record["result"] if record["key"] == key else None

    def write(self, run_name: str, key: str, model: str, result: dict):
        """Atomically (a temporary file beside the record, renamed over it)."""
        write_json({"key": key, "model": model, "result": result}, self.path(run_name))
