"""The `musicgen-cfg` console script: one entry point, one subcommand per module.

Each module listed in SUBCOMMAND_MODULES exposes `register(subparsers)`, which adds its parser and
sets `func` to a callable taking the parsed args. Run `musicgen-cfg --help` for the list.
"""

import argparse
import importlib
import sys

from musicgen_cfg.errors import UserError

# Imported when the parser is built (torch and transformers load then: `--help` takes a few seconds).
SUBCOMMAND_MODULES = [
    "musicgen_cfg.experiments.generate",
    "musicgen_cfg.training.pretrain",
    "musicgen_cfg.distillation",
    "musicgen_cfg.world.corpus",
    "rl.train_embedder",
    "merging.cli",
    "musicgen_cfg.world.judges",
    "musicgen_cfg.experiments.evaluate",
    "musicgen_cfg.experiments.reproduce",
    "app.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicgen-cfg", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def quiet_libraries():
    """Users see our progress and errors, not transformers' weight-loading bars and config warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # Training commands take `--key value` config overrides; everything else must parse exactly.
    if getattr(args, "accepts_overrides", False):
        args.overrides = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    quiet_libraries()
    try:
        result = args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
