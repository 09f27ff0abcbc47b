"""The sweeps' points in the (quality, diversity) plane: Point and its families, the Pareto front and
hypervolume, and the pooling of a point's training seeds (mean, two-level bootstrap CI). Pure functions of
`musicgen-cfg reproduce` (reproduce.py); no command of their own.

Hypervolume: area of the (quality, diversity_reward) region dominated by a family's points and
dominating the reference point r = nadir - 10% of the range on each axis, nadir = the worst quality and
the worst diversity over ALL points of the run, so that every family is measured against the same r.
"""

import dataclasses

import numpy as np

from musicgen_cfg.experiments.bootstrap import bootstrap_ci

FAMILIES = {  # marker, legend label
    "cfg": ("o", "base + CFG gamma (2x LM passes when gamma != 1)"),
    "temperature": ("^", "base, temperature"),
    "beta": ("s", "distilled, beta"),
    "lerp": ("D", "LERP merge, lambda"),
}
QUALITY_BETA, DIVERSITY_BETA = 0.0, 15.0
REFERENCE_MARGIN = 0.1  # the hypervolume reference sits this fraction of each axis' range below the nadir


@dataclasses.dataclass
class Point:
    """One point of a sweep: a family's parameter, the model and sampling of the run that measures it, its metrics."""

    family: str
    param: float  # gamma, temperature, beta or lambda
    label: str
    model_tag: str  # names the model's run directories
    model: str  # model spec
    guidance_scale: float = 1.0
    temperature: float = 1.0
    metrics: dict | None = None
    seed: int = 0  # training seed of the model
    pooled_runs: tuple[str, ...] = ()  # a point pooled over seeds: its members' run names

    @property
    def run_name(self) -> str:  # shared by points that are the same run (cfg gamma 1 = temperature 1)
        return f"{self.model_tag}_g{self.guidance_scale:g}_t{self.temperature:g}"

    @property
    def runs(self) -> tuple[str, ...]:
        return self.pooled_runs or (self.run_name,)


def point_mean(point: Point, metric: str) -> float:
    return point.metrics[metric]["mean"]


def family_points(points: list[Point], family: str) -> list[Point]:
    """The points of `family`, by increasing param."""
    return sorted((p for p in points if p.family == family), key=lambda p: p.param)


# -------------------------------------------------------------------------------------- geometry

def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (both maximised), by increasing first coordinate."""
    front, best_y = [], -np.inf
    for x, y in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return front[::-1]


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by `points` (both coordinates maximised) and dominating `reference`."""
    area, best_y = 0.0, reference[1]
    for x, y in sorted(((x, y) for x, y in points if x > reference[0] and y > reference[1]), key=lambda p: -p[0]):
        if y > best_y:  # sweeping from the best x down, each point adds the strip above the ones before
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return area


def reference_point(points: list[tuple[float, float]]) -> tuple[float, float]:
    """The hypervolume reference: REFERENCE_MARGIN of each axis' range below the nadir of `points`."""
    xs, ys = np.array(points).T
    return (float(xs.min() - REFERENCE_MARGIN * (np.ptp(xs) or 1.0)),
            float(ys.min() - REFERENCE_MARGIN * (np.ptp(ys) or 1.0)))


def front_quality_at(points: list[tuple[float, float]], diversity: float) -> float | None:
    """Quality of the piecewise-linear front through (quality, diversity) points at `diversity`; None outside it."""
    front = sorted(pareto_front(points), key=lambda p: p[1])
    ys = [p[1] for p in front]
    if not front or diversity < ys[0] or diversity > ys[-1]:
        return None
    return float(np.interp(diversity, ys, [p[0] for p in front]))


# ---------------------------------------------------------------------------------- seed pooling

def per_prompt_values(per_prompt: dict[str, dict[str, list]], runs, metric: str) -> np.ndarray:
    """[len(runs), P] values of `metric` per run and prompt, NaN where undefined (None)."""
    return np.array([[np.nan if v is None else v for v in per_prompt[run][metric]] for run in runs], dtype=np.float64)


def pool_seeds(points: list[Point], per_prompt: dict[str, dict[str, list]], resamples: int, seed: int) -> list[Point]:
    """One point per (family, param): a point with several seeds' runs gets pooled metrics.

    per_prompt: run name -> metric -> per-prompt values (None = undefined), as `evaluate` writes them.
    Pooled metric: mean over seeds and prompts, `bootstrap_ci`, and seed_means (each run's own mean);
    whole-set metrics (no per-prompt values) get the mean of the runs' values and no CI.
    """
    groups: dict[tuple[str, float], list[Point]] = {}
    for point in points:
        groups.setdefault((point.family, point.param), []).append(point)
    pooled = []
    for members in groups.values():
        if len(members) == 1:
            pooled.append(members[0])
            continue
        metrics = {}
        for name in set.intersection(*(set(p.metrics) for p in members)):
            seed_means = [p.metrics[name]["mean"] for p in members]
            if all(name in per_prompt[p.run_name] for p in members):
                values = per_prompt_values(per_prompt, [p.run_name for p in members], name)
                if np.isnan(values).all():
                    metrics[name] = {"mean": None, "ci_low": None, "ci_high": None, "num_prompts": 0}
                    continue
                low, high = bootstrap_ci(values, resamples, seed)
                metrics[name] = {"mean": float(np.nanmean(values)), "ci_low": low, "ci_high": high,
                                 "num_prompts": int((~np.isnan(values)).any(axis=0).sum())}
            else:
                defined = [m for m in seed_means if m is not None]
                metrics[name] = {"mean": float(np.mean(defined)) if defined else None, "ci_low": None,
                                 "ci_high": None, "num_prompts": members[0].metrics[name]["num_prompts"]}
            metrics[name]["seed_means"] = seed_means
        first = members[0]
        pooled.append(dataclasses.replace(first, metrics=metrics, pooled_runs=tuple(p.run_name for p in members)))
    return pooled
