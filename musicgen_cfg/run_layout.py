"""The layout of a training run directory (`musicgen-cfg train` / `pretrain` --out RUN): RUN/checkpoint-<step>/ for
each saved step and RUN/final for the finished export. In the model core because a run directory is also a model spec
(model.resolve_spec loads its finished export).

    .venv/bin/musicgen-cfg train --config configs/quality.yaml --out runs/q    # writes runs/q/checkpoint-*/, runs/q/final
"""

from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint-"
FINAL_EXPORT = "final"  # RUN/final: where `train` exports the finished model unless `export` says otherwise


def final_export_dir(run_dir: str | Path, export: str | None) -> Path:
    """Where a run's finished model goes: `export` when set, else RUN/final."""
    return Path(export) if export else Path(run_dir) / FINAL_EXPORT


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit())
