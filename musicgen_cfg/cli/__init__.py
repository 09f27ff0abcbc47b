"""The `musicgen-cfg` console script: one static table of commands, each imported only when it runs.

    musicgen-cfg --help                 # the commands (imports no command module)
    musicgen-cfg generate --help        # one command's options (imports its options dataclass only)

A command is either driven by an options dataclass (`options`: its fields become dash-case flags
through musicgen_cfg.config.add_arguments) or by a config dataclass (`config`: read from --config
YAML with `--key value` overrides, listed by --help-config; `resumable` adds --resume). Its `run`
gets the options, or the config and the command line. Descriptions are the modules' docstrings, read
from source without importing them.

Layer 7, the top: it may name any module (by string, imported on dispatch), and nothing imports it.
"""

import argparse
import ast
import dataclasses
import errno
import importlib
import importlib.util
import sys

from musicgen_cfg import config as configs
from musicgen_cfg.errors import UserError, cannot_write


@dataclasses.dataclass(frozen=True)
class Command:
    help: str
    run: str  # "module:function"
    options: str | None = None  # "module:Dataclass" of the command-line options
    config: str | None = None  # "module:Dataclass" of the --config YAML (+ --key value overrides)
    resumable: bool = False  # config commands: --resume continues from the last checkpoint in `out`


GROUPS = {
    "corpus": "the default world's dataset, built from music21's corpus",
    "embedder": "music embedders for the diversity reward",
    "judges": "evaluation judges of the default world",
}
COMMANDS = {
    "generate": Command("generate audio from text prompts (writes WAVs + manifest.jsonl)",
                        "musicgen_cfg.experiments.generate:main", options="musicgen_cfg.experiments.generate:GenerateArgs"),
    "pretrain": Command("train the embedded default base model on the music21 corpus",
                        "musicgen_cfg.training.pretrain:pretrain", config="musicgen_cfg.training.pretrain:PretrainConfig",
                        resumable=True),
    "train": Command("CFG distillation + diversity reward (YAML config + --key value overrides)",
                     "musicgen_cfg.training.distillation:train", config="musicgen_cfg.training.distillation:DistillConfig", resumable=True),
    "corpus build": Command("build the default world's dataset (segments + captions) from music21's corpus",
                            "musicgen_cfg.world.corpus_build:run_build", options="musicgen_cfg.world.corpus_build:BuildConfig"),
    "embedder train": Command("train the reward's music embedder (contrastive, on audio clips)",
                              "rl.train_embedder:run_train", options="rl.train_embedder_options:EmbedderTrainArgs"),
    "embedder check": Command("measure what an embedder's distances follow (notes, edits) on real segments",
                              "musicgen_cfg.experiments.embedder_check:run",
                              options="musicgen_cfg.experiments.embedder_check_options:EmbedderCheckArgs"),
    "merge": Command("merge checkpoints by weight interpolation (lerp / slerp / task arithmetic)",
                     "merging.cli:run", options="merging.cli:MergeArgs"),
    "judges train-scorer": Command("train the default world's text-music scorer (the text_match judge)",
                                   "musicgen_cfg.world.text_judge:run_train",
                                   options="musicgen_cfg.world.text_judge_options:ScorerTrainArgs"),
    "judges sweep-gamma": Command("sweep the CFG gamma of the default model under the default world's judges",
                                  "musicgen_cfg.experiments.gamma_sweep:run",
                                  options="musicgen_cfg.experiments.gamma_sweep:SweepArgs"),
    "judges ablate": Command("does naming a meter or a tempo change the default model's music? (paired ablation)",
                             "musicgen_cfg.experiments.attribute_ablation:run",
                             options="musicgen_cfg.experiments.attribute_ablation:AblationArgs"),
    "evaluate": Command("score generated runs: quality, diversity, note-level and real-audio metrics",
                        "musicgen_cfg.experiments.evaluate:run", options="musicgen_cfg.experiments.evaluate_options:EvaluateArgs"),
    "reproduce": Command("sweeps (CFG, temperature, beta, LERP) + Pareto plot + claim checks",
                         "musicgen_cfg.experiments.reproduce:reproduce",
                         config="musicgen_cfg.experiments.reproduce:ReproduceConfig"),
    "demo": Command("launch the Gradio demo with the shipped default models", "app.cli:run_demo",
                    options="app.cli:DemoArgs"),
    "app": Command("serve your quality/diversity models in the Gradio demo", "app.cli:run_app",
                   options="app.cli:AppArgs"),
}


def load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def docstring(target: str) -> str:
    """The docstring of the module `target` names, read from its source (nothing is imported)."""
    origin = importlib.util.find_spec(target.split(":")[0]).origin
    with open(origin, encoding="utf-8") as source:
        return ast.get_docstring(ast.parse(source.read())) or ""


def chosen(argv: list[str]) -> str | None:
    """The command the leading words of argv name ('generate', 'corpus build'), or None."""
    name = " ".join(argv[:2]) if argv[:1] and argv[0] in GROUPS else " ".join(argv[:1])
    return name if name in COMMANDS else None


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Every command appears in --help; only `selected` gets its options (and imports its dataclass)."""
    parser = argparse.ArgumentParser(prog="musicgen-cfg", description=__doc__.splitlines()[0])
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = {name: top.add_parser(name, help=help).add_subparsers(dest="action", required=True, metavar="ACTION")
              for name, help in GROUPS.items()}
    for name, command in COMMANDS.items():
        group, _, leaf = name.rpartition(" ")
        subparsers = groups[group] if group else top
        if name != selected:
            subparsers.add_parser(leaf, help=command.help)
            continue
        sub = subparsers.add_parser(leaf, help=command.help, description=docstring(command.run),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        if command.options:
            configs.add_arguments(sub, load(command.options))
        else:
            sub.add_argument("--config", default=None, help="YAML config in configs/; --key value pairs override it")
            if command.resumable:
                sub.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
            sub.add_argument("--help-config", action="store_true", help="list the config keys and exit")
            sub.epilog = "Any config key is also an option: --key value (see --help-config)."
    return parser


def parse(argv: list[str]):
    """(command name, its options) for argv: the options dataclass, or for config commands the loaded
    config. Bad options: argparse's usage line and exit 2; bad values: UserError. `--help-config`
    prints the config keys and gives (name, None)."""
    argv = configs.dash_case(argv)
    name = chosen(argv)
    parser = build_parser(name)
    command = COMMANDS.get(name)
    if command is None or command.options:
        args = parser.parse_args(argv)  # no command / bad command: argparse says so and exits
        return name, configs.from_args(load(command.options), args)
    args, overrides = parser.parse_known_args(argv)  # config commands: any config key is `--key value`
    config_cls = load(command.config)
    if args.help_config:
        print(configs.config_help(config_cls))
        return name, None
    config = configs.load_config(config_cls, args.config, overrides)
    return name, (config, {"resume": args.resume} if command.resumable else {})


def run(argv: list[str]) -> int:
    """Parse argv and run the command (UserError propagates; `main` turns it into one line)."""
    name, options = parse(argv)
    if options is None:
        return 0
    quiet_libraries()
    command = COMMANDS[name]
    if command.options:
        return int(load(command.run)(options) or 0)
    config, extra = options
    load(command.run)(config, command="musicgen-cfg " + " ".join(argv), **extra)
    return 0


def quiet_libraries():
    """Users see our progress and errors, not transformers' weight-loading bars and config warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# The errors of a write that the user's output place causes (atomic_directory turns its own into
# UserErrors; these are the ones raised by plain writes into a run directory).
WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EISDIR,
                errno.EEXIST, errno.EACCES, errno.EPERM, errno.EFBIG}


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the one boundary of write errors: a run directory, a log, a manifest line
        if err.errno not in WRITE_ERRNOS:
            raise
        print(f"error: {cannot_write(err.filename or 'the output', err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130

