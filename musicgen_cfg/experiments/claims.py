"""The seven claims of the paper, checked on the points of a `musicgen-cfg reproduce` run (reproduce.py):
each pass / fail / skipped (with the reason) and the numbers behind it, for claims.md and claims.json.
"""

import dataclasses

import numpy as np

from musicgen_cfg.experiments.bootstrap import bootstrap_ci
from musicgen_cfg.experiments.pareto import (
    DIVERSITY_BETA,
    QUALITY_BETA,
    Point,
    family_points,
    front_quality_at,
    per_prompt_values,
    point_mean,
)

# Held-out diversity measures of claim 7 and their names in claims.md; the note-level ones
# (rl/note_diversity.py) exist for default-world runs only.
HELDOUT_MEASURES = {"diversity_heldout": "held-out embedder", "note_distance_pitch_class": "pitch classes",
                    "note_distance_interval": "intervals", "note_distance_rhythm": "rhythm"}


def _ci(point: Point, metric: str) -> str:
    """'mean [ci_low, ci_high]', with each seed's mean of a pooled point."""
    stats = point.metrics[metric]
    text = f"{stats['mean']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}]"
    if stats.get("seed_means"):
        text += " (seeds " + ", ".join(f"{m:.4f}" for m in stats["seed_means"]) + ")"
    return text


def _result(number: int, claim: str, passed: bool | None, detail: str) -> dict:
    status = "skipped" if passed is None else "pass" if passed else "fail"
    return {"claim": number, "statement": claim, "status": status, "detail": detail}


@dataclasses.dataclass(frozen=True)
class ClaimInputs:
    """What the claims are checked on: the points by family, the reference CFG scale, the hypervolumes."""

    cfg: dict[float, Point]  # gamma -> point
    betas: list[Point]  # by beta
    beta_of: dict[float, Point]  # beta -> point
    lerps: list[Point]  # by lambda
    reference_gamma: float
    hypervolumes: dict[str, float]
    tolerance: float  # claim 4: largest step against the trend, as a fraction of the range
    per_prompt: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)  # run -> metric -> values
    resamples: int = 1000
    seed: int = 0

    def paired(self, high: Point, low: Point, metric: str) -> str:
        """' (paired +d [lo, hi])': high - low over the same prompts, seed s with seed s (a one-seed point
        with each seed of the other), two-level bootstrap CI; '' without per-prompt values."""
        values = [[self.per_prompt.get(run, {}).get(metric) for run in p.runs] for p in (high, low)]
        if any(v is None for side in values for v in side) or len({len(side) for side in values} - {1}) > 1:
            return ""  # values missing, or two multi-seed points with different seed counts
        if len({len(prompts) for side in values for prompts in side}) > 1:  # not the same prompts
            return ""
        a, b = (per_prompt_values(self.per_prompt, p.runs, metric) for p in (high, low))
        difference = a - b  # [S, P], broadcast when one side has one seed
        if np.isnan(difference).all():
            return ""
        low_ci, high_ci = bootstrap_ci(difference, self.resamples, self.seed)
        return f" (paired {np.nanmean(difference):+.4f} [{low_ci:+.4f}, {high_ci:+.4f}])"

    @property
    def plain(self) -> Point | None:
        return self.cfg.get(1.0)

    @property
    def guided(self) -> Point | None:
        """The CFG point at the reference gamma (None when that is gamma = 1, which is no guidance)."""
        return self.cfg.get(self.reference_gamma) if self.reference_gamma != 1.0 else None


# Each claim: (passed, detail), with passed None when the points it needs are missing (detail: which).
Verdict = tuple[bool | None, str]


def _cfg_trade_off(c: ClaimInputs) -> Verdict:
    plain, guided = c.plain, c.guided
    if not (plain and guided):
        return None, f"needs CFG points at gamma = 1 and gamma = {c.reference_gamma:g}"
    passed = point_mean(guided, "quality") > point_mean(plain, "quality") and \
        point_mean(guided, "diversity_reward") < point_mean(plain, "diversity_reward")
    return passed, (f"quality gamma=1 {_ci(plain, 'quality')} -> gamma={c.reference_gamma:g} {_ci(guided, 'quality')}; "
                    f"diversity {_ci(plain, 'diversity_reward')} -> {_ci(guided, 'diversity_reward')}. All gammas "
                    "(quality, diversity): " + ", ".join(f"{g:g}: ({point_mean(p, 'quality'):.4f}, "
                                                         f"{point_mean(p, 'diversity_reward'):.4f})" for g, p in c.cfg.items()))


def _distilled_cost(c: ClaimInputs) -> Verdict:
    quality_model, guided = c.beta_of.get(QUALITY_BETA), c.guided
    if not (quality_model and guided):
        return None, f"needs the beta = 0 model and CFG gamma = {c.reference_gamma:g}"
    cost = point_mean(quality_model, "lm_passes_per_second") / point_mean(guided, "lm_passes_per_second")
    wall = point_mean(quality_model, "seconds_per_second") / point_mean(guided, "seconds_per_second")
    passed = point_mean(quality_model, "quality") >= guided.metrics["quality"]["ci_low"] and cost <= 0.5 + 1e-9
    return passed, (f"quality beta=0 {_ci(quality_model, 'quality')} vs CFG gamma={c.reference_gamma:g} "
                    f"{_ci(guided, 'quality')} (pass: at least the CFG CI's lower end); LM passes ratio {cost:.3f}, "
                    f"measured wall-time ratio {wall:.3f}")


def _diversity_rises_with_beta(c: ClaimInputs) -> Verdict:
    if len(c.betas) < 2:
        return None, "needs at least two beta models"
    values = [point_mean(p, "diversity_reward") for p in c.betas]
    pairs = list(zip(c.betas, c.betas[1:])) + ([(c.betas[0], c.betas[-1])] if len(c.betas) > 2 else [])
    steps = [f"beta={hi.param:g} - beta={lo.param:g}{c.paired(hi, lo, 'diversity_reward')}" for lo, hi in pairs]
    return (all(b > a for a, b in zip(values, values[1:])),
            "; ".join(f"beta={p.param:g}: {_ci(p, 'diversity_reward')}" for p in c.betas)
            + (". Steps: " + "; ".join(steps) if any("paired" in s for s in steps) else ""))


def _smooth_in_lambda(c: ClaimInputs) -> Verdict:
    if len(c.lerps) < 3:
        return None, "needs at least three LERP points"
    worst = {metric: _against_trend([point_mean(p, metric) for p in c.lerps], sign)
             for metric, sign in (("quality", -1), ("diversity_reward", 1))}
    detail = "; ".join(f"lambda={p.param:g}: quality {point_mean(p, 'quality'):.4f}, diversity "
                       f"{point_mean(p, 'diversity_reward'):.4f}" for p in c.lerps)
    detail += (f". Largest step against the trend (fraction of the range): quality {worst['quality']:.3f}, "
               f"diversity {worst['diversity_reward']:.3f}; tolerance {c.tolerance:g}")
    return all(w <= c.tolerance for w in worst.values()), detail


def _lerp_dominates_cfg(c: ClaimInputs) -> Verdict:
    if not ("lerp" in c.hypervolumes and "cfg" in c.hypervolumes):
        return None, "needs LERP and CFG points"
    lerp, cfg = c.hypervolumes["lerp"], c.hypervolumes["cfg"]
    return lerp >= cfg, f"hypervolume LERP {lerp:.5f} vs CFG {cfg:.5f}"


def _merges_match_intermediate_betas(c: ClaimInputs) -> Verdict:
    intermediate = [p for p in c.betas if p.param not in (QUALITY_BETA, DIVERSITY_BETA)]
    if not (c.lerps and intermediate):
        return None, "needs LERP points and at least one intermediate-beta model"
    front = [(point_mean(p, "quality"), point_mean(p, "diversity_reward")) for p in c.lerps]
    verdicts = []
    for p in intermediate:
        q, d = point_mean(p, "quality"), point_mean(p, "diversity_reward")
        on_front = front_quality_at(front, d)
        if on_front is None:  # more diverse (or less) than any merge: some merge must beat it on both axes
            ok = any(fq >= q and fd >= d for fq, fd in front)
            verdicts.append((ok, f"beta={p.param:g} ({q:.4f}, {d:.4f}) outside the LERP diversity range, "
                                 f"{'dominated' if ok else 'not dominated'} by a merge"))
        else:
            ok = q <= on_front
            verdicts.append((ok, f"beta={p.param:g} quality {q:.4f} vs LERP front {on_front:.4f} at diversity {d:.4f}"))
    return all(ok for ok, _ in verdicts), "; ".join(text for _, text in verdicts)


def _heldout_agrees(c: ClaimInputs) -> Verdict:
    comparisons = []
    if c.plain and c.guided:
        comparisons.append((f"CFG gamma=1 over gamma={c.reference_gamma:g}", c.plain, c.guided))
    if QUALITY_BETA in c.beta_of and DIVERSITY_BETA in c.beta_of:
        comparisons.append((f"beta={DIVERSITY_BETA:g} over beta={QUALITY_BETA:g}", c.beta_of[DIVERSITY_BETA],
                            c.beta_of[QUALITY_BETA]))
    if len(c.lerps) >= 2:
        comparisons.append((f"lambda={c.lerps[-1].param:g} over lambda={c.lerps[0].param:g}", c.lerps[-1], c.lerps[0]))
    if not comparisons:
        return None, "no diversity comparison available"
    # In every comparison each held-out measure must rise: the held-out embedder and each note-level
    # distance (pitch classes, intervals, rhythm) on its own, not just their mean.
    compared = [p for _, hi, lo in comparisons for p in (hi, lo)]
    heldout = [m for m in HELDOUT_MEASURES if all(m in p.metrics for p in compared)]
    verdicts, texts = [], []
    for name, hi, lo in comparisons:
        gains = {m: point_mean(hi, m) - point_mean(lo, m) for m in ("diversity_reward", *heldout)}
        verdicts += [gains[m] > 0 for m in heldout]
        texts.append(f"{name}: reward {gains['diversity_reward']:+.4f}{c.paired(hi, lo, 'diversity_reward')}, "
                     + ", ".join(f"{HELDOUT_MEASURES[m]} {gains[m]:+.4f}{c.paired(hi, lo, m)}" for m in heldout))
    detail = "; ".join(texts)
    if len(heldout) > 1:
        detail += ". Note-level: mean pairwise total variation of the histograms; pass = every measure rises"
    return all(verdicts), detail


CLAIMS = (
    (1, "CFG raises quality and lowers diversity", _cfg_trade_off),
    (2, "beta = 0 reaches CFG quality at half the cost", _distilled_cost),
    (3, "diversity rises with beta", _diversity_rises_with_beta),
    (4, "quality and diversity move smoothly (near-monotone) with lambda", _smooth_in_lambda),
    (5, "the LERP front dominates the CFG front (hypervolume)", _lerp_dominates_cfg),
    (6, "merged models are at least as good as intermediate-beta models", _merges_match_intermediate_betas),
    (7, "the diversity changes hold under the held-out embedder (and, default world, the note-level measures)",
     _heldout_agrees),
)


def check_claims(points: list[Point], reference_gamma: float, hypervolumes: dict[str, float], tolerance: float,
                 per_prompt: dict[str, dict[str, list]] | None = None, resamples: int = 1000, seed: int = 0) -> list[dict]:
    """The seven claims of CLAIMS, each pass / fail / skipped (with the reason) and the numbers behind it.

    With per_prompt (run -> metric -> per-prompt values) the details of claims 3 and 7 add paired
    differences with their CIs; the verdicts are the same with or without them (they compare means).
    """
    betas = family_points(points, "beta")
    inputs = ClaimInputs({p.param: p for p in family_points(points, "cfg")}, betas, {p.param: p for p in betas},
                         family_points(points, "lerp"), reference_gamma, hypervolumes, tolerance, per_prompt or {},
                         resamples, seed)
    return [_result(number, claim, *verdict(inputs)) for number, claim, verdict in CLAIMS]


def _against_trend(values: list[float], sign: int) -> float:
    """Largest consecutive step in the direction opposite to `sign`, as a fraction of the values' range."""
    span = max(values) - min(values)
    worst = max((max(0.0, -sign * (b - a)) for a, b in zip(values, values[1:])), default=0.0)
    return worst / span if span > 0 else 0.0
