"""Does naming a meter or a tempo change the music? A paired ablation of the default base under the judges.

    musicgen-cfg judges ablate --out results/attribute_ablation   # [--model default] [--prompts 64] [--gammas 1 1.5]

Base prompts are captions of style-balanced held-out TEST segments (gamma_sweep.choose_prompts) drawn with
the style, meter and tempo left out, so that nothing in them implies a meter or a tempo ("In D major,
two-part, played on fiddle"). Each base prompt is sampled as it is and with each variant appended
(", in 3/4", ", at 60 bpm", ...), with the same seeds, at each gamma (default: 1 and the model's teacher
gamma).

- Meter (METERS): the samples of "base, in M" and of "base" are both scored under meter M by the judges
  (`DefaultWorldJudges.score` with the named prompt), so the difference is what naming M did:
  meter_adherence, strong_beat (mean metric weight of the onsets) and periodicity (autocorrelation at the
  bar lag).
- Tempo (TEMPI): onsets per second of audio at the tempo the prompt renders at (captions.render_settings:
  the codec plays a prompt's named tempo) and onsets per quarter note, which only the model can change.

Differences are paired over prompts (a prompt's samples averaged first): mean and standard error.
Writes OUT/results.json and OUT/results.md (replaced atomically).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from musicgen_cfg.config import field
from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.gamma_sweep import JudgedRunOptions, run_judged

METERS = ("2/4", "3/4", "4/4", "6/8")
TEMPI = ("slow", "fast", "at 60 bpm", "at 160 bpm")
METER_COLUMNS = ("meter_adherence", "strong_beat", "periodicity")


@dataclass
class AblationConfig:
    """Options of `musicgen-cfg judges ablate` that decide what is sampled."""

    model: str = field("default", "model spec for load_model (default = the shipped base)")
    prompts: int = field(64, "base prompts (held-out test captions without style, meter and tempo)", min=1)
    samples: int = field(4, "generations per prompt, variant and gamma", min=1)
    gammas: tuple[float, ...] | None = field(None, "guidance scales, comma-separated; default: 1 and the model's teacher gamma")
    batch_size: int = field(256, "rows per sampling call", min=1)
    seed: int = field(0, "seed of the prompt choice and captions; sample seeds are seed * 1e6 + row", min=0)
    device: str = field("cpu", "cpu, cuda or auto", choices=("cpu", "cuda", "auto"))

    def __post_init__(self):
        if self.gammas is not None:
            self.gammas = tuple(float(g) for g in self.gammas)
            if not self.gammas or min(self.gammas) < 0 or not all(np.isfinite(self.gammas)):
                raise UserError(f"--gammas must be finite non-negative numbers, got {self.gammas}")


def variant_prompts(base: list[str]) -> dict[str, list[str]]:
    """{"none": base, "in 3/4": [...], "at 60 bpm": [...], ...}: each variant appended to every base prompt."""
    variants = {"none": list(base)}
    for name in (*(f"in {meter}" for meter in METERS), *TEMPI):
        variants[name] = [f"{prompt}, {name}" for prompt in base]
    return variants


def paired(named: np.ndarray, unnamed: np.ndarray) -> dict:
    """Means of per-prompt values [P] (NaN prompts dropped pairwise) and their paired difference +- SE."""
    keep = ~(np.isnan(named) | np.isnan(unnamed))
    difference = named[keep] - unnamed[keep]
    se = float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else float("nan")
    return {"named": float(named[keep].mean()) if keep.any() else None,
            "unnamed": float(unnamed[keep].mean()) if keep.any() else None,
            "difference": float(difference.mean()) if keep.any() else None, "se": se, "prompts": int(keep.sum())}


def onset_rates(codes: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Per sample: onsets per second of audio (at each prompt's render tempo) and per quarter note [N]."""
    from musicgen_cfg.world.captions import render_settings
    from musicgen_cfg.world.judges import note_arrays
    from musicgen_cfg.world.symbolic import FRAMES_PER_QUARTER

    onsets = note_arrays(codes)["onset"].sum(axis=(1, 2)).astype(float)
    quarters = codes.shape[-1] / FRAMES_PER_QUARTER
    bpm = np.array([render_settings(p).tempo_bpm for p in prompts])
    return {"onsets_per_quarter": onsets / quarters, "onsets_per_second": onsets / (quarters * 60.0 / bpm)}


def ablate(config: AblationConfig, out: Path, dataset_path=None, scorer_dir=None, log=print) -> dict:
    """Sample, judge and write the ablation (module docstring); returns the results dict."""
    from musicgen_cfg.checkpoint import atomic_directory, write_json
    from musicgen_cfg.experiments.gamma_sweep import choose_prompts, generate, per_prompt_means
    from musicgen_cfg.model import load_model, pick_device
    from musicgen_cfg.world.captions import CaptionDropout, render_settings
    from musicgen_cfg.world.corpus import load_dataset
    from musicgen_cfg.world.judges import DefaultWorldJudges

    test = load_dataset("test", dataset_path)
    _, base = choose_prompts(test, config.prompts, config.seed, CaptionDropout(style=1.0, meter=1.0, tempo=1.0))
    judges = DefaultWorldJudges(dataset_path, scorer_dir)
    model = load_model(config.model, device=pick_device(config.device))
    if not model.is_symbolic:
        raise UserError(f"the judges score the default world's symbolic codes; {config.model!r} is not symbolic")
    gammas = config.gammas or tuple(sorted({1.0, float(model.default_guidance_scale)}))
    variants = variant_prompts(base)
    result = {"settings": {**asdict(config), "gammas": list(gammas), "meters": list(METERS), "tempi": list(TEMPI)},
              "model_weights_sha256": model.weights_sha256(), "dataset_sha256": judges.dataset_sha256,
              "base_prompts": base, "meter": {}, "tempo": {}}
    for gamma in gammas:
        codes = {name: generate(model, prompts, config, gamma) for name, prompts in variants.items()}
        unnamed_rates = onset_rates(codes["none"], [p for p in base for _ in range(config.samples)])
        for meter in METERS:
            named_prompts = [p for p in variants[f"in {meter}"] for _ in range(config.samples)]
            named = judges.score(codes[f"in {meter}"], named_prompts)
            unnamed = judges.score(codes["none"], named_prompts)  # the same meter's yardstick
            result["meter"].setdefault(meter, {})[f"{gamma:g}"] = {
                column: paired(per_prompt_means(named[column], config.samples), per_prompt_means(unnamed[column], config.samples))
                for column in METER_COLUMNS}
        for tempo in TEMPI:
            rates = onset_rates(codes[tempo], [p for p in variants[tempo] for _ in range(config.samples)])
            result["tempo"].setdefault(tempo, {})[f"{gamma:g}"] = {
                "render_bpm": render_settings(variants[tempo][0]).tempo_bpm,
                **{rate: paired(per_prompt_means(rates[rate], config.samples), per_prompt_means(unnamed_rates[rate], config.samples))
                   for rate in rates}}
        adherence = {m: result["meter"][m][f"{gamma:g}"]["meter_adherence"]["difference"] for m in METERS}
        log(f"gamma {gamma:g}: meter adherence named - unnamed " + ", ".join(f"{m} {d:+.3f}" for m, d in adherence.items()))
    with atomic_directory(out) as tmp:
        write_json(result, tmp / "results.json")
        (tmp / "results.md").write_text(markdown(result))
    return result


def _pair_cells(entry: dict, digits: int = 3) -> list[str]:
    return [f"{entry['named']:.{digits}f}", f"{entry['unnamed']:.{digits}f}",
            f"{entry['difference']:+.{digits}f} +- {entry['se']:.{digits}f}"]


def markdown(result: dict) -> str:
    """The two tables of results.md (meter, tempo)."""
    settings = result["settings"]
    lines = ["# Named meter and tempo: what they change (default base, paired over prompts)", "",
             f"{settings['prompts']} base prompts (held-out test captions without style, meter and tempo) x "
             f"{settings['samples']} samples per variant and gamma, same seeds; model `{settings['model']}` (weights "
             f"sha256 {result['model_weights_sha256'][:12]}). Named = the prompt with the variant appended, unnamed = "
             "the base prompt; both scored under the named meter. Mean (named), mean (unnamed), difference +- SE.", "",
             "| meter | gamma | adherence named | unnamed | difference | strong beat named | unnamed | difference "
             "| periodicity named | unnamed | difference |", "|" + "---|" * 11]
    for meter, by_gamma in result["meter"].items():
        for gamma, row in by_gamma.items():
            lines.append(f"| {meter} | {gamma} | " + " | ".join(cell for column in METER_COLUMNS for cell in _pair_cells(row[column])) + " |")
    lines += ["", "| tempo | gamma | render bpm | onsets/s named | unnamed | difference | onsets/quarter named | "
              "unnamed | difference |", "|" + "---|" * 9]
    for tempo, by_gamma in result["tempo"].items():
        for gamma, row in by_gamma.items():
            lines.append(f"| {tempo} | {gamma} | {row['render_bpm']:g} | " + " | ".join(
                [*_pair_cells(row["onsets_per_second"], 2), *_pair_cells(row["onsets_per_quarter"], 2)]) + " |")
    return "\n".join(lines) + "\n"


@dataclass(kw_only=True)
class AblationArgs(AblationConfig, JudgedRunOptions):
    """Options of `musicgen-cfg judges ablate`: the ablation, its output and its data."""


def run(args: AblationArgs) -> int:
    return run_judged(args, AblationConfig, ablate, markdown)
