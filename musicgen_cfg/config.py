"""Config dataclasses and the one dataclass -> argparse bridge of the `musicgen-cfg` commands.

Every command's options are a dataclass of `field(default, help, ...)` fields: each declares its bounds
(min, max, gt, lt, choices, finite), checked in one place (`check_bounds`) wherever values arrive; what
relates several fields is validated in `__post_init__`.
`add_arguments` turns the fields into dash-case options (`num_samples` -> `--num-samples`) and
`from_args` builds the dataclass back from the parsed options; the training commands read their
config from YAML with `--key value` overrides instead (`load_config`, keys listed by `config_help`).
Light on purpose (no torch): `musicgen-cfg COMMAND --help` imports this and the command's options only.
"""

import argparse
import dataclasses
import errno
import math
import operator
import os
import sys
import tempfile
import types
import typing
from pathlib import Path

import yaml

from musicgen_cfg.errors import UserError

REQUIRED = dataclasses.MISSING
# The --dtype option of the commands that generate (generate, demo, app); model.pick_dtype reads it.
DTYPE_HELP = ("LM weights for generation: auto (float32 on CPU, bfloat16 on CUDA; float16 on GPUs without bf16), "
              "float32, bfloat16 or float16 (CUDA only)")


# The shipped artifacts (default models, embedder, scorer, dataset) inside the installed package. No run writes
# there unless it says so: a README command with a config that once exported there replaced the demo's model.
SHIPPED_ASSETS = Path(__file__).resolve().parent / "assets"
REBUILD_SHIPPED_HELP = ("allow out / export inside the shipped assets (musicgen_cfg/assets/): only the recipes that "
                        "rebuild them (make assets, make gpu-recipe) set it")


def check_output_path(path: str | Path | None, key: str = "--out", rebuild_shipped: bool = False) -> None:
    """THE check of an output directory (`key` names its option), before any work, so a bad one never
    costs a model load or leaves a partial output; creates nothing. One-line UserError for: '' (the
    current directory), an existing file (never replaced by a directory), a missing parent that is a
    file, a name longer than the file system allows, an unwritable place (read-only directory or file
    system: probed with a temporary file, as os.access ignores read-only mounts and says yes to root),
    and a place inside SHIPPED_ASSETS unless the command was told to rebuild them (`rebuild_shipped`)."""
    if path is None:
        return
    if str(path) in ("", "."):
        raise UserError(f"{key} {str(path)!r} is empty (the current directory); name a directory")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{key} {path} exists and is not a directory (a file is never replaced by one)")
    existing, missing = path, []
    while not existing.exists():
        existing, missing = existing.parent, [existing.name, *missing]
    if not existing.is_dir():
        raise UserError(f"{key} {path} cannot be created: {existing} is a file")
    try:
        longest = os.pathconf(existing, "PC_NAME_MAX")
        if any(len(name.encode()) > longest for name in missing):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{key} {path} is not writable: {err.strerror or err} in {existing}") from None
    resolved = path.expanduser().resolve()
    if not rebuild_shipped and (resolved == SHIPPED_ASSETS or SHIPPED_ASSETS in resolved.parents):
        raise UserError(f"{key} {path} is inside the shipped assets ({SHIPPED_ASSETS}); write elsewhere, or pass "
                        f"--rebuild-shipped true to rebuild them on purpose")


def dashed(name: str) -> str:
    return name.replace("_", "-")


def dash_case(argv: list[str]) -> list[str]:
    """Command-line options in dash-case; the old underscore spelling (--num_frames) still works, with a note."""
    out = []
    for token in argv:
        key, eq, value = token.partition("=")
        if key.startswith("--") and "_" in key:
            print(f"note: {key} is spelled {dashed(key)} now; the underscore spelling will go", file=sys.stderr)
            token = dashed(key) + eq + value
        out.append(token)
    return out


def _field_type(cls, name: str):
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return (args[0] if is_union and len(args) == 1 else hint), is_union


def _section(cls, name: str):
    """The dataclass type of a nested config section (e.g. `lora`), or None for a plain value."""
    kind, _ = _field_type(cls, name)
    return kind if dataclasses.is_dataclass(kind) else None


def _is_none(value) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("none", "null"))


def _convert(cls, name: str, value, label: str | None = None):
    """`value` (YAML or command-line text) as field `name`'s type; `label` names it in errors (`lora.rank`)."""
    kind, optional = _field_type(cls, name)
    if optional and (value is None or _is_none(value)):
        return None
    try:
        if value is None or isinstance(value, (dict, list)) and kind in (bool, int, float, str):
            raise TypeError(value)  # YAML `model: null` or `out: [a, b]` for a plain value
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if value not in (0, 1):
                raise ValueError(value)
            return bool(value)
        if kind in (int, float, str):
            if isinstance(value, bool):
                raise TypeError(value)  # YAML `steps: true` is not the number 1
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return kind(value)
        if typing.get_origin(kind) is tuple or kind is tuple:
            item = (typing.get_args(kind) or (str,))[0]
            if isinstance(value, str):  # "a,b" from YAML or --key a,b
                return tuple(item(v.strip()) if item in (int, float) else v.strip() for v in value.split(",") if v.strip())
            if item in (int, float):  # numbers may come as "0.5,0.25" within a list too
                return tuple(item(v) for part in value for v in str(part).split(",") if v.strip())
            # strings in a list (YAML, or a repeated flag such as --prompt): as given, commas and spaces included
            return tuple(value)
    except (TypeError, ValueError, OverflowError):
        shown = "null" if value is None else repr(value)
        raise UserError(f"config key {label or name!r}: cannot read {shown} as {getattr(kind, '__name__', kind)}") from None
    return value


COMPARISONS = {"gt": operator.gt, "min": operator.ge, "lt": operator.lt, "max": operator.le}  # field(...) bounds


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bounds_text(bounds: dict) -> str:
    """A field's declared bounds in words (--help, --help-config, errors): `in [0, 1)`, `> 0`, `one of a, b`."""
    low = ("[", bounds["min"]) if "min" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = (bounds["max"], "]") if "max" in bounds else (bounds["lt"], ")") if "lt" in bounds else None
    parts = []
    if low and high:
        parts.append(f"in {low[0]}{_number(low[1])}, {_number(high[0])}{high[1]}")
    elif low:
        parts.append(f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}")
    elif high:
        parts.append(f"{'<=' if high[1] == ']' else '<'} {_number(high[0])}")
    if "choices" in bounds:
        parts.append("one of " + ", ".join(map(str, bounds["choices"])))
    if bounds.get("finite", True) is False:
        parts.append("inf allowed")
    return ", ".join(parts)


def check_bounds(cls, values: dict, prefix: str = "", flags: bool = False) -> None:
    """THE check of the declared bounds (field(min=, max=, gt=, lt=, choices=, finite=)) of `values`, the
    fields of `cls` about to be built: one place for the command line, YAML, overrides and resume.

    Every float is finite unless its field says `finite=False` (then inf, never NaN); ints and floats
    obey min / max (inclusive) and gt / lt (exclusive); a tuple's items each obey them. Errors name the
    config key (`lora.rank`), or with `flags` the command-line option (`--num-samples`)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        bounds = fields[name].metadata.get("bounds", {})
        label = f"--{dashed(name)}" if flags else prefix + name
        for item in value if isinstance(value, tuple) else (value,):
            if item is None or dataclasses.is_dataclass(item):
                continue
            if isinstance(item, float) and not math.isfinite(item) and (math.isnan(item) or bounds.get("finite", True)):
                raise UserError(f"{label} must be a finite number, got {item}")
            if "choices" in bounds and item not in bounds["choices"]:
                raise UserError(f"{label} must be one of {', '.join(map(str, bounds['choices']))}, got {item!r}")
            numeric = {key: bounds[key] for key in COMPARISONS if key in bounds}
            if isinstance(item, (int, float)) and not isinstance(item, bool) and not all(
                    COMPARISONS[key](item, limit) for key, limit in numeric.items()):
                raise UserError(f"{label} must be {bounds_text(numeric)}, got {_number(item)}")


def load_config(cls, path: str | Path | None, overrides: list[str] | None = None):
    """cls(**YAML) with `--key value` / `--key=value` overrides; unknown keys fail with one line.

    A field whose type is a dataclass is a section (`lora`): a YAML mapping, updated by its dotted
    keys (`--lora.rank 8`); `--lora none` turns an optional section off."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise UserError(f"config {path} is not UTF-8 text (binary, or another encoding such as Latin-1)") from None
        except (yaml.YAMLError, RecursionError) as err:
            raise UserError(f"malformed YAML in {path}: {str(err).splitlines()[0] if str(err) else 'nested too deeply'}") from None
        if not isinstance(data, dict):
            raise UserError(f"config {path} must be a mapping of key: value")
    data.update(parse_overrides(overrides or []))
    return _build(cls, data)


def _build(cls, data: dict, prefix: str = ""):
    """cls(**data): a section field takes a mapping (YAML) updated by its dotted keys (`lora.rank`)."""
    flat, dotted = {}, {}
    for key, value in data.items():
        head, dot, rest = key.partition(".")
        if dot:
            dotted.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    unknown = sorted((set(flat) | set(dotted)) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"unknown config key {prefix + unknown[0]!r} (see --help-config for the keys)")
    values = {}
    for key in [f.name for f in dataclasses.fields(cls) if f.name in flat or f.name in dotted]:
        section, label = _section(cls, key), prefix + key
        if section is None:
            if key in dotted:
                raise UserError(f"config key {label!r} is a value, not a section: write --{dashed(label)} VALUE")
            values[key] = _convert(cls, key, flat[key], label)
        elif key in flat and _is_none(flat[key]) and key not in dotted:
            values[key] = None
        elif key in flat and not isinstance(flat[key], dict) and not _is_none(flat[key]):
            raise UserError(f"config key {label!r} is a section: give it a mapping of key: value "
                            f"or --{dashed(label)}.KEY VALUE")
        else:
            mapping = flat.get(key) if isinstance(flat.get(key), dict) else {}
            values[key] = _build(section, {**mapping, **dotted.get(key, {})}, prefix=f"{label}.")
    check_bounds(cls, values, prefix)
    return cls(**values)


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    values, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise UserError(f"expected --key value, got {token!r}")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(tokens):
            value, i = tokens[i + 1], i + 1
        else:
            raise UserError(f"missing value for --{key}")
        values[key.replace("-", "_")] = value
        i += 1
    return values


def config_help(cls, prefix: str = "") -> str:
    """One line per field: YAML key (on the command line: --key-name value), default, help; a section's
    fields follow it as section.key (--section.key-name value)."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        notes = [text for text in (bounds_text(f.metadata.get("bounds", {})),
                                   "fixed for --resume" if f.metadata.get("fixed") else "") if text]
        bounds = "; ".join(notes)
        lines.append(f"  {prefix}{f.name:<{24 - len(prefix)}} {default!r:<22} {f.metadata.get('help', '')}"
                     + (f" [{bounds}]" if bounds else ""))
        section = _section(cls, f.name)
        if section is not None:
            lines.append(config_help(section, prefix=f"{prefix}{f.name}."))
    return "\n".join(lines)


def field(default, help: str, *, min=None, max=None, gt=None, lt=None, choices=None, finite: bool = True,
          fixed: bool = False, **argparse_options):
    """A dataclass field with help text (shown by --help and --help-config). `default=REQUIRED` makes a
    required option (the dataclass must then be `kw_only`); `argparse_options` (metavar, action,
    flag="--other-name") go to its command-line option unchanged.

    The bounds are declared here and nowhere else: min / max (inclusive), gt / lt (exclusive), choices,
    and finite=False for a float that may be inf (every other float must be finite). check_bounds
    enforces them for every way a value arrives, --help and --help-config show them. `fixed`: a training
    setting that defines what the run's weights are (lr, beta, seed, ...), which --resume may not change
    (training/run.check_resume_config)."""
    bounds = {key: value for key, value in (("min", min), ("max", max), ("gt", gt), ("lt", lt), ("choices", choices))
              if value is not None}
    if not finite:
        bounds["finite"] = False
    metadata = {"help": help, "argparse": argparse_options, "bounds": bounds, "fixed": fixed}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One option per field of the dataclass `cls`: bool -> a switch, tuple[X, ...] -> one or more values
    (spaces or commas between them), `X | None` -> an optional X, `flag="name"` -> a positional
    argument; the field's help, with its default, is the option's help."""
    for f in dataclasses.fields(cls):
        kind, _ = _field_type(cls, f.name)
        options = dict(f.metadata.get("argparse", {}))
        flag = options.pop("flag", f"--{dashed(f.name)}")
        text = f.metadata["help"]
        bounds = f.metadata.get("bounds", {})
        if "choices" in bounds and kind in (int, float, str):
            options["choices"] = bounds["choices"]
        elif bounds_text(bounds):
            text += f" [{bounds_text(bounds)}]"
        if f.default is not dataclasses.MISSING:
            options["default"] = f.default
            if f.default is not None and f.default is not False and f.default != ():
                shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
                text += f" (default: {shown})"
        elif flag.startswith("-"):
            options["required"] = True
        if options.get("action") == "append":
            options["type"] = typing.get_args(kind)[0]
        elif kind is bool:
            options["action"] = "store_true" if not f.default else argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.setdefault("nargs", "+")
        elif kind in (int, float, str, Path):
            options["type"] = kind
        if flag.startswith("-"):
            options["dest"] = f.name
        parser.add_argument(flag, help=text.replace("%", "%%"), **options)


def from_args(cls, args: argparse.Namespace):
    """The dataclass `cls` from options added by `add_arguments` (its __post_init__ validates them)."""
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        kind, _ = _field_type(cls, f.name)
        if typing.get_origin(kind) is tuple and isinstance(value, list):
            value = _convert(cls, f.name, value)
        values[f.name] = value
    check_bounds(cls, values, flags=True)
    return cls(**values)
