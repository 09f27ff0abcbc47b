"""Every `musicgen-cfg ...` command the README, app/README.md and docs/ show is a valid command line.

tests/experiments/test_workflow.py RUNS the README's real-MusicGen block end to end. The other
commands (the default world's training, pretraining, corpus build, sweeps) take minutes to hours, so
here each one is parsed exactly as written through the CLI's own parser: the command and every flag
exist, the values pass validation and a config file it names loads. A renamed flag, a removed command
or a config key that no longer exists fails this test.
"""

import re
import shlex
from pathlib import Path

import pytest

from musicgen_cfg import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "app" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `musicgen-cfg`) of every command line in the docs: each line of a fenced code
    block, and inline code that gives flags without placeholders (`musicgen-cfg merge --models ...`)."""
    found = []
    for path in DOCS:
        fenced = False
        for number, line in enumerate(path.read_text().replace("\\\n", " ").splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            pattern = r"^\s*(?:musicgen-cfg|.*-m musicgen_cfg\.cli) ([^#]*)" if fenced else r"`(?:musicgen-cfg|[^`]*-m musicgen_cfg\.cli) ([^`]*)`"
            for match in re.finditer(pattern, line):
                words = shlex.split(match.group(1))
                placeholder = any(re.search(r"^[A-Z]+$|[A-Z]{2,}|\.\.\.|^\$", word) for word in words)
                if words and not words[0].startswith("-") and not placeholder and (fenced or "--" in match.group(1)):
                    found.append((f"{path.relative_to(ROOT)}:{number}", words))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20
    assert {argv[0] for _, argv in COMMANDS} >= {"generate", "train", "merge", "evaluate", "app", "demo", "pretrain"}


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(argv, monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository
    name, options = cli.parse(argv)
    assert name == " ".join(argv[: len(name.split())]) and options is not None
