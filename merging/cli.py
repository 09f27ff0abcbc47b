"""`musicgen-cfg merge`: mix the quality (beta = 0) and diversity (beta = 15) checkpoints.

    musicgen-cfg merge --models runs/q runs/d --lam 0.5 --out runs/merged      # run dirs: their final exports
    musicgen-cfg merge --models Q D --lam 0.5 --out merged/
    musicgen-cfg merge --models Q D --sweep 0,0.25,0.5,0.75,1 --out sweep/     # sweep/lam_0.25, ...
    musicgen-cfg merge --models Q D --method task_arithmetic --base BASE --weights 0.5 0.5 --out DIR

A model is a checkpoint directory, a `musicgen-cfg train` run directory (its final export, else its
latest checkpoint, said on stderr) or a shipped default (default-quality, ...). The output is a
hub-ready model directory (musicgen_cfg/export.py). The merging itself lives in merging/merge.py.
"""

import argparse
import math

from merging import merge
from musicgen_cfg.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge checkpoints by weight interpolation (lerp / slerp / task arithmetic)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models", nargs="+", required=True, metavar="DIR", help="checkpoint or training run dirs (quality first)"
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--lam", type=float, help="0 = first model, 1 = second model")
    amount.add_argument(
        "--sweep", metavar="L1,L2,...", help="comma-separated lams, one output dir each: OUT/lam_L"
    )
    parser.add_argument("--method", choices=merge.METHODS, default="lerp")
    parser.add_argument("--base", metavar="DIR", help="shared base theta_0 (task_arithmetic only)")
    parser.add_argument("--weights", type=float, nargs="+", help="task_arithmetic: one weight per model")
    parser.add_argument(
        "--allow-extrapolation",
        action="store_true",
        help="allow lam outside [0, 1] (recorded in the manifest)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output dirs (atomically)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output dir (the sweep's parent dir)")
    parser.set_defaults(func=run)


def parse_sweep(text: str) -> list[float]:
    try:
        lams = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise UserError(f"--sweep takes comma-separated numbers like 0,0.25,0.5, got {text!r}") from None
    if not all(math.isfinite(lam) for lam in lams):
        raise UserError(f"--sweep values must be finite numbers, got {text!r}")
    return lams


def run(args: argparse.Namespace) -> int:
    from musicgen_cfg.model import resolve_spec

    args.models = [resolve_spec(model) for model in args.models]
    args.base = resolve_spec(args.base) if args.base is not None else None
    if args.sweep is not None:
        if args.weights is not None:
            raise UserError("--sweep varies lam; it cannot be combined with --weights")
        written = merge.sweep_checkpoints(
            args.models,
            args.out,
            parse_sweep(args.sweep),
            method=args.method,
            base=args.base,
            allow_extrapolation=args.allow_extrapolation,
            overwrite=args.overwrite,
        )
    else:
        written = [
            merge.merge_checkpoints(
                args.models,
                args.out,
                method=args.method,
                lam=args.lam,
                weights=args.weights,
                base=args.base,
                allow_extrapolation=args.allow_extrapolation,
                overwrite=args.overwrite,
            )
        ]
    for path in written:
        print(f"wrote {path}")
    return 0
