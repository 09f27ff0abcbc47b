"""The CFG acceptance sweep (issue 3, section 6): every judge of the base model's samples per guidance scale.

    musicgen-cfg judges sweep-gamma [--model default] [--prompts 200] [--samples 4] \
        [--gammas 1,1.25,1.5,2,3,5] --out results/gamma_sweep

Prompts are captions of held-out TEST segments: `prompts` segments chosen style-balanced (round robin over
the styles, seeded order within each), one seeded caption each. Every prompt gets `samples` generations
of one segment length (128 frames) per gamma, with the same seeds at every gamma (paired comparisons),
and no finetuning. The real test segments behind the prompts are scored as a reference row.
Diversity is the mean pairwise 1 - cos among a prompt's samples under the scorer's music tower.

Writes OUT/results.json (settings, the prompts, per-gamma means and standard errors, per-style means,
per-prompt quality and diversity for paired comparisons, the acceptance checks and the peak gamma) and
OUT/results.md (the tables).

Acceptance (paired over prompts, "clearly" = by more than two standard errors): quality at the peak gamma
is above gamma = 1 (CFG helps), quality at the largest gamma is below the peak (caricature is caught),
and diversity falls from gamma = 1 to the peak gamma.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# torch, the models and checkpoint I/O are imported in the functions that run the sweep, so that
# `musicgen-cfg judges sweep-gamma --help` (which imports SweepArgs) stays free of torch.
from musicgen_cfg.config import REQUIRED, field
from musicgen_cfg.errors import UserError
from musicgen_cfg.world.corpus import SEGMENT_FRAMES

# Per-sample judges shown in the table (means over samples; NaN samples skipped), in column order.
COLUMNS = ("quality", "key_accuracy", "scale_fit", "texture_adherence", "style_adherence", "meter_adherence",
           "text_match", "realism", "realism_distance", "onsets", "active_voices")
STYLE_COLUMNS = ("quality", "style_adherence", "texture_adherence", "key_accuracy", "realism", "onsets")


@dataclass
class SweepConfig:
    """Options of `musicgen-cfg judges sweep-gamma`."""

    model: str = field("default", "model spec for load_model (default = the shipped base)")
    prompts: int = field(200, "held-out test prompts")
    samples: int = field(4, "generations per prompt and gamma (>= 2 for diversity)")
    gammas: tuple[float, ...] = field((1.0, 1.25, 1.5, 2.0, 3.0, 5.0), "guidance scales, comma-separated")
    batch_size: int = field(200, "rows per sampling call")
    seed: int = field(0, "seed of the prompt choice and captions; sample seeds are seed * 1e6 + row")
    device: str = field("cpu", "cpu, cuda or auto")

    def __post_init__(self):
        self.gammas = tuple(float(g) for g in self.gammas)
        if self.prompts < 1 or self.batch_size < 1:
            raise UserError(f"--prompts and --batch-size must be >= 1, got {self.prompts} and {self.batch_size}")
        if self.samples < 2:
            raise UserError(f"--samples must be >= 2 (diversity compares a prompt's samples), got {self.samples}")
        if not self.gammas or min(self.gammas) < 0 or len(set(self.gammas)) != len(self.gammas):
            raise UserError(f"--gammas must be distinct non-negative numbers, got {self.gammas}")
        if 1.0 not in self.gammas:
            raise UserError("--gammas must include 1 (the acceptance checks compare against plain sampling)")
        self.gammas = tuple(sorted(self.gammas))


def choose_prompts(test, count: int, seed: int, dropout=None) -> tuple[np.ndarray, list[str]]:
    """`count` test segments, style-balanced (round robin over styles, seeded order within each; a style
    that runs out drops out), and one seeded caption each -> (indices int [count], prompts).
    dropout: the captions' per-attribute dropout (captions.CaptionDropout; None = the default)."""
    rng = random.Random(seed)
    queues = []
    for style in sorted(set(test.styles.tolist())):
        rows = np.flatnonzero(test.styles == style).tolist()
        rng.shuffle(rows)
        queues.append(rows)
    if count > len(test):
        raise UserError(f"--prompts {count} exceeds the {len(test)} test segments")
    chosen = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return np.array(chosen), [test.sample_caption(i, rng, dropout=dropout) for i in chosen]


def generate(model, prompts: list[str], config: SweepConfig, gamma: float) -> np.ndarray:
    """codes uint8 [len(prompts) * samples, 4, SEGMENT_FRAMES]: prompt-major, seeds fixed per row."""
    import torch

    from musicgen_cfg.sampler import SamplingConfig, sample

    rows = [p for p in prompts for _ in range(config.samples)]
    seeds = [config.seed * 1_000_000 + row for row in range(len(rows))]
    sampling = SamplingConfig(guidance_scale=gamma)
    parts = []
    for start in range(0, len(rows), config.batch_size):
        chunk = slice(start, start + config.batch_size)
        parts.append(sample(model.lm, model.condition(rows[chunk]), SEGMENT_FRAMES, sampling, seeds[chunk]).cpu())
    return torch.cat(parts).numpy().astype(np.uint8)


def summarise(scores: dict[str, np.ndarray], prompts_per_sample: int, styles: list) -> dict:
    """Means (NaN skipped) and standard errors over prompts (samples of a prompt are averaged first) of
    COLUMNS, and per-style means of STYLE_COLUMNS. styles: the style of each prompt."""
    summary = {}
    for name in COLUMNS:
        per_prompt = per_prompt_means(scores[name], prompts_per_sample)
        valid = per_prompt[~np.isnan(per_prompt)]
        summary[name] = float(valid.mean()) if len(valid) else None
        summary[f"{name}_se"] = float(valid.std(ddof=1) / np.sqrt(len(valid))) if len(valid) > 1 else None
    summary["by_style"] = {}
    for style in sorted(set(styles)):
        rows = np.array([s == style for s in styles])
        summary["by_style"][style] = {
            name: _nanmean(per_prompt_means(scores[name], prompts_per_sample)[rows]) for name in STYLE_COLUMNS}
    return summary


def per_prompt_means(values: np.ndarray, samples: int) -> np.ndarray:
    """float [P * samples] (prompt-major) -> prompt means [P], NaN where every sample is NaN."""
    grouped = values.reshape(-1, samples)
    counts = (~np.isnan(grouped)).sum(1)
    return np.where(counts > 0, np.nansum(grouped, 1) / np.maximum(counts, 1), np.nan)


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def paired_check(higher: np.ndarray, lower: np.ndarray) -> dict:
    """Is `higher` above `lower` by more than 2 standard errors? Both per prompt [P], paired."""
    difference = higher - lower
    se = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else float("nan")
    mean = float(difference.mean())
    return {"difference": mean, "se": se, "holds": bool(mean > 2 * se)}


def acceptance(per_prompt_quality: dict[float, np.ndarray], per_prompt_diversity: dict[float, np.ndarray]) -> dict:
    """The three acceptance checks (module docstring) from per-prompt means [P] per gamma."""
    gammas = sorted(per_prompt_quality)
    means = {g: float(per_prompt_quality[g].mean()) for g in gammas}
    peak = max(gammas, key=lambda g: means[g])
    largest = gammas[-1]
    return {
        "peak_gamma": peak,
        "quality_by_gamma": {str(g): means[g] for g in gammas},
        "cfg_helps": {**paired_check(per_prompt_quality[peak], per_prompt_quality[1.0]), "peak_above_1": peak > 1.0},
        "caricature_caught": {**paired_check(per_prompt_quality[peak], per_prompt_quality[largest]),
                              "largest_gamma": largest},
        "diversity_falls": paired_check(per_prompt_diversity[1.0], per_prompt_diversity[peak]),
    }


def _cell(value, digits=3) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """The tables of results.md."""
    header = ["gamma", *COLUMNS, "fad", "diversity", "seconds"]
    lines = ["# CFG gamma sweep (base model, no finetuning)", "",
             f"{result['settings']['prompts']} held-out test prompts x {result['settings']['samples']} samples, "
             f"{SEGMENT_FRAMES} frames; model `{result['settings']['model']}` (weights sha256 "
             f"{result['model_weights_sha256'][:12]}); judges: musicgen_cfg/world/judges.py. Means over prompts "
             "(+- standard error for quality); NaN judges skipped. Peak gamma: "
             f"**{result['acceptance']['peak_gamma']:g}**.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [("real test", result["real"])] + [(f"{g:g}", result["gammas"][f"{g:g}"]) for g in result["settings"]["gammas"]]
    for label, row in rows:
        cells = [label]
        for name in COLUMNS:
            digits = 1 if name in ("onsets", "active_voices") else 3
            cell = _cell(row[name], digits)
            if name == "quality":
                cell += f" +- {_cell(row['quality_se'])}"
            cells.append(cell)
        cells += [_cell(row["fad"]), _cell(row.get("diversity")), _cell(row.get("seconds"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per style (quality / style adherence / texture adherence / key accuracy / realism / onsets):", "",
              "| gamma | " + " | ".join(result["real"]["by_style"]) + " |", "|---|" + "---|" * len(result["real"]["by_style"])]
    for label, row in rows:
        cells = [" / ".join(_cell(row["by_style"][s][n], 1 if n == "onsets" else 2) for n in STYLE_COLUMNS)
                 for s in result["real"]["by_style"]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    checks = result["acceptance"]
    lines += ["", "Acceptance (paired over prompts; holds = difference > 2 standard errors):", ""]
    for name in ("cfg_helps", "caricature_caught", "diversity_falls"):
        check = checks[name]
        lines.append(f"- {name}: difference {check['difference']:+.4f} +- {check['se']:.4f} -> "
                     f"{'holds' if check['holds'] else 'does NOT hold'}")
    return "\n".join(lines) + "\n"


def run_sweep(config: SweepConfig, out: Path, dataset_path=None, scorer_dir=None, log=print, judges=None) -> dict:
    """Generate, judge and write the sweep (module docstring); returns the results dict.
    `judges`: a DefaultWorldJudges to reuse (else one is built from dataset_path and scorer_dir)."""
    import torch

    from musicgen_cfg.checkpoint import WEIGHTS_NAME, atomic_directory, file_sha256, write_json
    from musicgen_cfg.model import load_model, pick_device
    from musicgen_cfg.world.corpus import load_dataset
    from musicgen_cfg.world.judges import DefaultWorldJudges, prompt_attributes
    from rl.diversity import pairwise_diversity

    test = load_dataset("test", dataset_path)
    indices, prompts = choose_prompts(test, config.prompts, config.seed)
    styles = [test.meta(int(i))["style"] for i in indices]
    judges = judges or DefaultWorldJudges(dataset_path, scorer_dir)
    model = load_model(config.model, device=pick_device(config.device))
    if not model.is_symbolic:
        raise UserError(f"the judges score the default world's symbolic codes; {config.model!r} is not symbolic")
    real_scores = judges.score(test.codes(indices), prompts)
    result = {"settings": {**asdict(config), "frames": SEGMENT_FRAMES}, "model_weights_sha256": model.weights_sha256(),
              "dataset_sha256": judges.dataset_sha256,
              "scorer_weights_sha256": file_sha256(judges.scorer_dir / WEIGHTS_NAME),
              "prompts": [{"test_index": int(i), "style": s, "prompt": p, "parsed": prompt_attributes(p)}
                          for i, s, p in zip(indices, styles, prompts)],
              "real": {**summarise(real_scores, 1, styles),
                       "fad": judges.distribution_distance(test.codes(indices), prompts)},
              "gammas": {}}
    sample_prompts = [p for p in prompts for _ in range(config.samples)]
    quality, diversity = {}, {}
    for gamma in config.gammas:
        started = time.perf_counter()
        codes = generate(model, prompts, config, gamma)
        seconds = time.perf_counter() - started
        scores = judges.score(codes, sample_prompts)
        embeddings = torch.from_numpy(judges.embed_codes(codes)).view(len(prompts), config.samples, -1)
        diversity[gamma] = pairwise_diversity(embeddings).mean(1).numpy().astype(float)
        quality[gamma] = per_prompt_means(scores["quality"], config.samples)
        row = {**summarise(scores, config.samples, styles), "fad": judges.distribution_distance(codes, sample_prompts),
               "diversity": float(diversity[gamma].mean()),
               "diversity_se": float(diversity[gamma].std(ddof=1) / np.sqrt(len(prompts))) if len(prompts) > 1 else None,
               "seconds": round(seconds, 1),
               "per_prompt": {"quality": quality[gamma].tolist(), "diversity": diversity[gamma].tolist()}}
        result["gammas"][f"{gamma:g}"] = row
        log(f"gamma {gamma:g}: quality {row['quality']:.3f}, key {_cell(row['key_accuracy'])}, style "
            f"{_cell(row['style_adherence'])}, realism {row['realism']:.3f}, onsets {row['onsets']:.1f}, "
            f"fad {row['fad']:.3f}, diversity {row['diversity']:.3f} ({seconds:.0f}s sampling)")
    result["acceptance"] = acceptance(quality, diversity)
    with atomic_directory(out) as tmp:
        write_json(result, tmp / "results.json")
        (tmp / "results.md").write_text(markdown(result))
    return result


@dataclass(kw_only=True)
class JudgedRunOptions:
    """The output and data options of the judges' experiments (sweep-gamma, ablate)."""

    out: Path = field(REQUIRED, "output directory (replaced atomically)")
    dataset: Path | None = field(None, "dataset .npz (default: the shipped one)")
    scorer: Path | None = field(None, "scorer directory (default: the shipped one)")
    threads: int = field(1, "torch CPU threads", min=1)


def run_judged(args: JudgedRunOptions, config_class, experiment, markdown_of) -> int:
    """Run `experiment(config, out, dataset, scorer, log=...)` on the `config_class` part of `args`; print its tables."""
    import torch

    torch.set_num_threads(args.threads)
    config = config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})
    result = experiment(config, Path(args.out), args.dataset, args.scorer,
                        log=lambda message: print(message, file=sys.stderr, flush=True))
    print(markdown_of(result))
    return 0


@dataclass(kw_only=True)
class SweepArgs(SweepConfig, JudgedRunOptions):
    """Options of `musicgen-cfg judges sweep-gamma`: the sweep, its output and its data."""


def run(args: SweepArgs) -> int:
    return run_judged(args, SweepConfig, run_sweep, markdown)
