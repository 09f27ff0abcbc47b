"""Property: every numeric option of every command, fed random non-finite and out-of-range values, is
either accepted within its declared bounds or refused cleanly (UserError: one line; argparse: its usage and
one error line; both exit 2), never a traceback; a non-finite value is never accepted (inf only where the
field declares finite=False) and a value outside the declared bounds never is. Parse level only (no run).

    python -m pytest -q tests/test_option_bounds_property.py
"""

import dataclasses
import functools
import math
import random
import typing

import pytest

from musicgen_cfg import cli
from musicgen_cfg.config import COMPARISONS, _field_type
from musicgen_cfg.errors import UserError

# What each command needs besides the option under test (required options), so that parsing reaches it.
REQUIRED = {
    "generate": ["--prompt", "x", "--out", "OUT"],
    "merge": ["--models", "A", "B", "--out", "OUT"],
    "evaluate": ["RUN"],
    "judges sweep-gamma": ["--out", "OUT"],
    "app": ["--quality", "Q", "--diversity", "D"],
}
NON_FINITE = ["nan", "inf", "-inf", "NaN", "1e400", "-1e400"]
CACHED_PARSER = functools.lru_cache(cli.build_parser)  # building the parser is most of a parse's time


@pytest.fixture(autouse=True)
def one_parser_per_command(monkeypatch):
    monkeypatch.setattr(cli, "build_parser", CACHED_PARSER)


def numeric_fields(name: str):
    """(dataclass, field, kind) of every int / float option of command `name`, sections included."""
    command = cli.COMMANDS[name]
    cls = cli.load(command.options or command.config)
    out = []

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            kind, _ = _field_type(cls, f.name)
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{f.name}.")
            elif kind in (int, float) or typing.get_args(kind)[:1] in ((int,), (float,)):
                out.append((prefix + f.name, f, kind))
    walk(cls, "")
    return out


CASES = [(name, label, f, kind) for name in cli.COMMANDS for label, f, kind in numeric_fields(name)]


def random_values(kind, rng: random.Random) -> list[str]:
    """Non-finite spellings, huge and tiny magnitudes of both signs, and a few uniform draws."""
    values = list(NON_FINITE) + [str(2**70), str(-(2**70)), "-1", "0", "1e30", "-1e30", "1e-30"]
    values += [repr(rng.uniform(-1e6, 1e6)) for _ in range(3)] + [str(rng.randint(-(2**64), 2**64)) for _ in range(3)]
    return values


def parse(name: str, label: str, value: str):
    flag = "--" + label.replace("_", "-")
    argv = [*name.split(), *REQUIRED.get(name, []), flag, value]
    return cli.parse(argv)


@pytest.mark.parametrize("name, label, f, kind", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_random_values_of_a_numeric_option_are_accepted_in_bounds_or_refused_in_one_line(name, label, f, kind,
                                                                                         capsys, monkeypatch,
                                                                                         tmp_path):
    monkeypatch.chdir(tmp_path)  # output checks probe the working directory; nothing is written
    rng = random.Random(hash((name, label)) & 0xFFFF)
    bounds = f.metadata.get("bounds", {})
    for value in random_values(kind, rng):
        try:
            result = parse(name, label, value)
        except UserError as err:
            assert "\n" not in str(err), (value, str(err))
            continue
        except SystemExit as exit_:  # argparse: a value of the wrong type (int option, float text)
            assert exit_.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("musicgen-cfg"), value
            continue
        options = result[1][0] if isinstance(result[1], tuple) else result[1]
        parsed = options
        for part in label.split("."):
            parsed = getattr(parsed, part)
        number = float(value)
        assert math.isfinite(number) or (number == math.inf and bounds.get("finite", True) is False), \
            f"{name} {label} accepted {value}"
        numeric = {key: bounds[key] for key in COMPARISONS if key in bounds}
        items = parsed if isinstance(parsed, tuple) else () if parsed is None else (parsed,)  # None: turned off
        assert all(COMPARISONS[key](item, limit) for item in items for key, limit in numeric.items()), \
            f"{name} {label}={parsed}"
