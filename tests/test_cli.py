"""The `musicgen-cfg` command table: every command parses, `--help` imports neither torch nor
transformers (what makes it answer at once; bench/cli_help.py times it), flags are dash-case and
the old underscore spelling still works with one note.

    pytest tests/test_cli.py
"""

import subprocess
import sys
from pathlib import Path

import pytest

from musicgen_cfg import cli
from musicgen_cfg.config import add_arguments, dash_case, from_args

ROOT = Path(__file__).resolve().parents[1]


def imported_by_help(words: list[str]) -> set[str]:
    """Top-level modules loaded by `musicgen-cfg WORDS --help` in a fresh interpreter."""
    code = ("import sys\nfrom musicgen_cfg.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, *words, "--help"], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    assert done.stdout.startswith("usage: musicgen-cfg")
    return set(done.stderr.split())


@pytest.mark.parametrize("words", [[], *[name.split() for name in cli.COMMANDS]],
                         ids=lambda words: " ".join(words) or "top")
def test_help_imports_no_torch(words):
    assert not {"torch", "transformers"} & imported_by_help(words)


def test_every_command_builds_its_parser():
    for name, command in cli.COMMANDS.items():
        sub = cli.build_parser(name)._subparsers._group_actions[0]
        assert name.split()[0] in sub.choices
        assert cli.docstring(command.run).strip(), f"{name}: its module has no docstring to show"


def test_options_round_trip_through_argparse():
    import argparse

    from merging.cli import MergeArgs

    parser = argparse.ArgumentParser()
    add_arguments(parser, MergeArgs)
    options = from_args(MergeArgs, parser.parse_args(["--models", "a", "b", "--weights", "0.5,0.25", "--out", "o"]))
    assert options == MergeArgs(models=("a", "b"), weights=(0.5, 0.25), out="o")
    with pytest.raises(SystemExit):  # a required option missing: argparse's usage line, exit 2
        parser.parse_args(["--models", "a"])


def test_underscore_spelling_still_works_with_one_note(capsys):
    assert dash_case(["--num_samples", "2", "--top-k=3", "--top_p=0.5", "x_y"]) == [
        "--num-samples", "2", "--top-k=3", "--top-p=0.5", "x_y"]
    assert capsys.readouterr().err.splitlines() == [
        "note: --num_samples is spelled --num-samples now; the underscore spelling will go",
        "note: --top_p is spelled --top-p now; the underscore spelling will go"]


def test_config_commands_take_any_key_and_list_them(capsys):
    assert cli.main(["reproduce", "--help-config"]) == 0
    assert "guidance_scales" in capsys.readouterr().out
    assert cli.main(["reproduce", "--no-such-key", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown config key 'no_such_key' (see --help-config for the keys)"


def test_the_public_api_names_the_core():
    import musicgen_cfg
    from musicgen_cfg.model import load_model
    from musicgen_cfg.sampler import SamplingConfig

    assert musicgen_cfg.load_model is load_model and musicgen_cfg.SamplingConfig is SamplingConfig
    assert all(getattr(musicgen_cfg, name) is not None for name in musicgen_cfg.__all__)
    with pytest.raises(AttributeError):
        musicgen_cfg.corpus  # noqa: B018  (the world is not part of the core's API)


def test_repeated_flags_keep_each_value_whole(tmp_path):
    """A repeated --prompt is a list of prompts: commas and blanks inside one are the user's text."""
    _, args = cli.parse(["generate", "--prompt", "a jig, fast", "--prompt", "", "--out", "outputs/x"])
    assert args.prompt == ("a jig, fast", "")
    _, build = cli.parse(["corpus", "build", "--collections", "oneills", "ryans", "--out", str(tmp_path / "d.npz")])
    assert build.collections == ("oneills", "ryans")
