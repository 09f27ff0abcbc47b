"""`musicgen-cfg embedder check SPEC`: what an embedder's distances follow (rl/embedder_check.py measures it).

    musicgen-cfg embedder check default                       # the shipped reward embedder
    musicgen-cfg embedder check judges                        # the default world's held-out embedder
    musicgen-cfg embedder check my-embedder --segments 40     # a directory of `musicgen-cfg embedder train`
    musicgen-cfg embedder check encodec-emb --codec-model runs/q/final   # a real MusicGen's EnCodec latents

SPEC is resolved by evaluate's load_spec_embedder, so every spec `musicgen-cfg evaluate` takes works here.
Writes JSON (atomically) to --out, default bench/results/embedder_check_<label>.json: the spec, the
embedder's identity (weights sha256), the dataset's sha256, the settings, the rank correlations, the
edit distances and the seconds taken; prints a markdown table row (columns: bench/README.md).
"""

import re
import time
from dataclasses import asdict
from pathlib import Path

import torch

from musicgen_cfg.checkpoint import file_sha256, write_json
from musicgen_cfg.experiments.embedder_check_options import EmbedderCheckArgs
from musicgen_cfg.experiments.embedder_specs import embed_clips, embedder_identity, load_spec_embedder
from rl.embedder_check import EDITS, PAIR_MEASURES, check_embedder, select_style_groups

RESULTS_DIR = Path("bench") / "results"
TABLE_COLUMNS = ("spec", *(f"rho {name}" for name in PAIR_MEASURES), "same_style", "rerender", *EDITS)


def label_of(spec: str) -> str:
    """A file-name-safe label of a spec: "clap:laion/clap-htsat-unfused" -> "clap_laion_clap-htsat-unfused"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_.") or "embedder"


def markdown_table(results: list[dict]) -> str:
    """One markdown row per check result (TABLE_COLUMNS), under a header."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for result in results:
        rhos = [f"{result['correlations']['pooled'][name]:.2f}" for name in PAIR_MEASURES]
        distances = [result["distances"][name]["mean"] for name in ("same_style", "rerender", *EDITS)]
        shown = ["–" if value is None else f"{value:.3f}" for value in distances]
        lines.append("| " + " | ".join([result["spec"], *rhos, *shown]) + " |")
    return "\n".join(lines)


def run_check(args: EmbedderCheckArgs) -> dict:
    """The check's JSON content (rl/embedder_check.check_embedder plus provenance)."""
    from musicgen_cfg.world.codec import SymbolicCodec
    from musicgen_cfg.world.corpus import DEFAULT_PATH, load_dataset

    started = time.perf_counter()
    embedder = load_spec_embedder(args.spec, args.codec_model)
    codec = SymbolicCodec()
    groups = select_style_groups(load_dataset("test"), args.segments, args.crop_seconds, args.seed)

    def render(codes, prompt):
        return codec.decode(codes, [prompt] * len(codes))

    def embed(codes, waveforms):
        return embed_clips(embedder, codes, waveforms, codec.sample_rate)

    measured = check_embedder(groups, render, embed)
    return {
        "spec": args.spec,
        "embedder": embedder_identity(embedder),
        "dataset": {"file": DEFAULT_PATH.name, "split": "test", "sha256": file_sha256(DEFAULT_PATH)},
        "settings": {**{k: v for k, v in asdict(args).items() if k not in ("spec", "out")},
                     "groups": {g.style: {"prompt": g.prompt, "segments": len(g.codes), "frames": g.codes.shape[-1]}
                                for g in groups}},
        **measured,
        "seconds": round(time.perf_counter() - started, 1),
    }


def run(args: EmbedderCheckArgs) -> int:
    torch.set_num_threads(args.threads)
    result = run_check(args)
    out = Path(args.out) if args.out else RESULTS_DIR / f"embedder_check_{label_of(args.spec)}.json"
    write_json(result, out)
    print(markdown_table([result]))
    print(f"{result['num_pairs']['pooled']} within-style pairs, {result['seconds']} s -> {out}")
    return 0
