"""`musicgen-cfg merge`: mix the quality (beta = 0) and diversity (beta = 15) checkpoints.

    musicgen-cfg merge --models runs/q runs/d --lam 0.5 --out runs/merged      # run dirs: their final exports
    musicgen-cfg merge --models Q D --lam 0.5 --out merged/
    musicgen-cfg merge --models Q D --sweep 0,0.25,0.5,0.75,1 --out sweep/     # sweep/lam_0.25, ...
    musicgen-cfg merge --models Q D --method task_arithmetic --base BASE --weights 0.5 0.5 --out DIR

A model is a checkpoint directory, a `musicgen-cfg train` run directory (its final export, else its
latest checkpoint, said on stderr) or a shipped default (default-quality, ...). The output is a
hub-ready model directory (musicgen_cfg/export.py). The merging itself lives in merging/merge.py (files) and
merging/methods.py (the rules).
"""

import math
from dataclasses import dataclass

from musicgen_cfg.config import REQUIRED, check_output_path, field
from musicgen_cfg.errors import UserError


@dataclass(kw_only=True)
class MergeArgs:
    """Options of `musicgen-cfg merge`."""

    models: tuple[str, ...] = field(REQUIRED, "checkpoint or training run dirs (quality first)", metavar="DIR")
    lam: float | None = field(None, "0 = first model, 1 = second model")
    sweep: str | None = field(None, "comma-separated lams, one output dir each: OUT/lam_L", metavar="L1,L2,...")
    method: str = field("lerp", "merge rule: lerp | slerp | task_arithmetic (checked by merging/methods.py)")
    base: str | None = field(None, "shared base theta_0 (task_arithmetic only)", metavar="DIR")
    weights: tuple[float, ...] | None = field(None, "task_arithmetic: one weight per model")
    allow_extrapolation: bool = field(False, "allow lam outside [0, 1] (recorded in the manifest)")
    overwrite: bool = field(False, "replace existing output dirs (atomically)")
    out: str = field(REQUIRED, "output dir (the sweep's parent dir)", metavar="DIR")

    def __post_init__(self):
        if self.lam is not None and self.sweep is not None:
            raise UserError("--lam and --sweep exclude each other: one merge or a sweep")


def parse_sweep(text: str) -> list[float]:
    try:
        lams = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"--sweep takes comma-separated numbers like 0,0.25,0.5, got {text!r}") from None
    if not all(math.isfinite(lam) for lam in lams):
        raise UserError(f"--sweep values must be finite numbers, got {text!r}")
    return lams


def run(args: MergeArgs) -> int:
    from merging import merge
    from musicgen_cfg.model import resolve_spec

    check_output_path(args.out)
    models = [resolve_spec(model) for model in args.models]
    base = resolve_spec(args.base) if args.base is not None else None
    if args.sweep is not None:
        if args.weights is not None:
            raise UserError("--sweep varies lam; it cannot be combined with --weights")
        written = merge.sweep_checkpoints(
            models,
            args.out,
            parse_sweep(args.sweep),
            method=args.method,
            base=base,
            allow_extrapolation=args.allow_extrapolation,
            overwrite=args.overwrite,
        )
    else:
        written = [
            merge.merge_checkpoints(
                models,
                args.out,
                method=args.method,
                lam=args.lam,
                weights=list(args.weights) if args.weights is not None else None,
                base=base,
                allow_extrapolation=args.allow_extrapolation,
                overwrite=args.overwrite,
            )
        ]
    for path in written:
        print(f"wrote {path}")
    return 0
