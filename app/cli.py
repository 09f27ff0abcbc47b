"""`musicgen-cfg demo` and `musicgen-cfg app`: serve the Gradio demo of the quality <-> diversity knob.

    musicgen-cfg demo                        # shipped default models, 127.0.0.1, opens a browser (make demo)
    musicgen-cfg demo --no-browser --port 7861
    musicgen-cfg app --quality runs/q --diversity runs/d --base facebook/musicgen-small \\
        --embedder clap:laion/clap-htsat-unfused --device auto --no-browser [--host 0.0.0.0 --port 7860] [--share]

Both take the same server options (--host, --port, --share, --device, --out, --no-browser). `app`
takes checkpoint directories, training run directories (their final export, else their latest
checkpoint), the shipped default-quality / default-diversity, or, for --base, also a hub id.

`demo` serves default-quality and default-diversity with the base model `default` for the CFG
comparison. Until the shipped quality/diversity models are built (musicgen_cfg/assets/default/quality,
.../diversity), the base model stands in for a missing one, with a note on the page and in the log;
each start looks again, so they are picked up as soon as they exist. Generated WAVs, codes, pictures
and manifest.jsonl go to a per-session folder under --out (default: a new temporary folder).
"""

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from musicgen_cfg.config import DTYPE_HELP, REQUIRED, check_output_path, field
from musicgen_cfg.errors import UserError

LOCALHOST = "127.0.0.1"
EMBEDDER_MISSING = ("diversity is not measured: the default reward embedder is not built yet "
                    "(musicgen_cfg/assets/default/embedder)")
NO_EMBEDDER = "diversity is not measured: start the app with --embedder SPEC (e.g. clap:laion/clap-htsat-unfused)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(kw_only=True)
class DemoArgs:
    """Options of `musicgen-cfg demo`: the server (also taken by `app`)."""

    host: str = field(LOCALHOST, f"interface to bind ({LOCALHOST}: this machine only)")
    port: int | None = field(None, "port (default: the first free one from 7860)", min=1, max=65535)
    share: bool = field(False, "also open a public gradio.live link (off by default)")
    device: str = field("auto", "auto (cuda when available), cpu or cuda")
    dtype: str = field("auto", DTYPE_HELP)
    out: str | None = field(None, "folder for generated files + manifests (default: a new temp folder)")
    no_browser: bool = field(False, "do not open a browser tab")


@dataclass(kw_only=True)
class AppArgs(DemoArgs):
    """Options of `musicgen-cfg app`: the two models to merge (+ base, embedder) and the server."""

    quality: str = field(REQUIRED, "the beta = 0 (quality) checkpoint or training run directory")
    diversity: str = field(REQUIRED, "the beta = 15 (diversity) checkpoint or training run directory, same base")
    base: str | None = field(None, "base model (dir or hub id) for the 'compare with base + CFG' option")
    embedder: str | None = field(None, "reward embedder for the diversity readout: default, a trained dir, or "
                                       "clap:DIR (default: the shipped one for default-world models, none otherwise)")


def shipped_endpoint(role: str) -> tuple[str, str | None]:
    """(spec to load, note) for the shipped `default-<role>` model; the base model stands in while it is missing."""
    from musicgen_cfg.model import ASSETS

    path = ASSETS / role
    if (path / "config.json").is_file():
        return f"default-{role}", None
    return "default", (f"the shipped {role} model is not built yet ({path.relative_to(ASSETS.parent.parent.parent)} "
                       f"is missing): the base model `default` stands in for it; it is used from the next start on "
                       f"once it exists.")


def _out_root(out: str | None) -> Path:
    return Path(out) if out else Path(tempfile.mkdtemp(prefix="musicgen-cfg-app-"))


def _serve(quality, diversity, base, embedder_spec, embedder_note, notes, args) -> int:
    from app.engine import Engine
    from app.ui import launch
    from musicgen_cfg.model import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)  # a bad option fails before anything is created
    if args.share:
        log("note: --share opens a public link; anyone with it can use this machine's models")
    check_output_path(args.out or None)  # before any model loads ('' = a new temp folder): a file or unwritable --out would fail every request
    out_root = _out_root(args.out)
    engine = Engine.load(quality, diversity, base, embedder_spec, embedder_note, device, out_root, notes, log=log,
                         dtype=dtype)
    log(f"generated files and manifest.jsonl go to {out_root}/session-*/")
    launch(engine, args.host, args.port, share=args.share, inbrowser=not args.no_browser, log=log)
    return 0


def run_demo(args: DemoArgs) -> int:
    from app.engine import Endpoint
    from rl.embedders import CONFIG_NAME, DEFAULT_EMBEDDER_DIR

    notes = []
    endpoints = {}
    for role in ("quality", "diversity"):
        spec, note = shipped_endpoint(role)
        endpoints[role] = Endpoint(role, f"default-{role}", spec)
        if note:
            log(f"note: {note}")
            notes.append(note[0].upper() + note[1:])
    if all(e.spec == "default" for e in endpoints.values()):
        notes.append("With the base model at both ends, λ does not change the music yet.")
    has_embedder = (DEFAULT_EMBEDDER_DIR / CONFIG_NAME).is_file()
    if not has_embedder:
        log(f"note: {EMBEDDER_MISSING}")
    return _serve(endpoints["quality"], endpoints["diversity"], Endpoint("base", "default", "default"),
                  "default" if has_embedder else None, EMBEDDER_MISSING, notes, args)


def run_app(args: AppArgs) -> int:
    from app.engine import Endpoint
    from musicgen_cfg.checkpoint import read_json
    from musicgen_cfg.model import is_symbolic_config, resolve_spec
    from rl.embedders import CONFIG_NAME, DEFAULT_EMBEDDER_DIR

    resolved = {}
    for flag, value in (("--quality", args.quality), ("--diversity", args.diversity)):
        resolved[flag] = resolve_spec(value, log=log)  # default-quality, ... -> the shipped directory
        if not Path(resolved[flag]).is_dir():
            raise UserError(f"{flag} {value} is not a checkpoint or training run directory (nor default-quality, "
                            f"default-diversity)")
    embedder = args.embedder
    if embedder is None:  # default-world checkpoints come with the shipped embedder when it exists
        config = read_json(Path(resolved["--quality"]) / "config.json")
        if is_symbolic_config(config) and (DEFAULT_EMBEDDER_DIR / CONFIG_NAME).is_file():
            embedder = "default"
    base = Endpoint("base", args.base, resolve_spec(args.base, log=log)) if args.base else None
    return _serve(Endpoint("quality", args.quality, resolved["--quality"]),
                  Endpoint("diversity", args.diversity, resolved["--diversity"]),
                  base, embedder, NO_EMBEDDER, [], args)
