"""Claim 7 of `musicgen-cfg reproduce` on hand-made points: held-out and note-level measures must all rise."""

import pytest

from musicgen_cfg.experiments.claims import check_claims
from musicgen_cfg.experiments.pareto import Point
from musicgen_cfg.experiments.reproduce_report import plot_front

NOTE = ("note_distance_pitch_class", "note_distance_interval", "note_distance_rhythm")


def point(family, param, tag, diversity, heldout, notes=None, **kwargs):
    values = {"quality": 0.5, "diversity_reward": diversity, "diversity_heldout": heldout,
              "lm_passes_per_second": 10.0, "seconds_per_second": 1.0}
    if notes is not None:
        values.update(zip(NOTE, notes))
        values["note_diversity"] = sum(notes) / 3
    metrics = {name: {"mean": v, "ci_low": v, "ci_high": v, "num_prompts": 4} for name, v in values.items()}
    return Point(family, param, f"{family}={param:g}", tag, tag, metrics=metrics, **kwargs)


def claim_7(quality_notes, diversity_notes):
    points = [point("beta", 0.0, "beta_0", 0.2, 0.3, quality_notes), point("beta", 15.0, "beta_15", 0.3, 0.4, diversity_notes)]
    return {c["claim"]: c for c in check_claims(points, 3.0, {}, 0.1)}[7]


def test_claim_7_needs_every_note_level_measure_to_rise():
    held = claim_7((0.1, 0.2, 0.3), (0.2, 0.3, 0.4))
    assert held["status"] == "pass" and "pitch classes +0.1000" in held["detail"]
    # The embedder and two of the three note-level measures rise; the rhythm distance falls: the claim fails.
    failed = claim_7((0.1, 0.2, 0.3), (0.2, 0.3, 0.25))
    assert failed["status"] == "fail" and "rhythm -0.0500" in failed["detail"]
    assert "held-out embedder +0.1000" in failed["detail"]


def test_claim_7_without_note_level_measures_is_judged_on_the_heldout_embedder():
    real_world = claim_7(None, None)
    assert real_world["status"] == "pass" and "pitch" not in real_world["detail"]


def test_note_level_plot(tmp_path):
    points = [point("cfg", g, "base", 0.3 - g / 20, 0.3, (0.3 - g / 20,) * 3, guidance_scale=g) for g in (1.0, 3.0)]
    plot_front(points, {}, tmp_path / "note.png", "note_diversity", "note-level diversity")
    assert (tmp_path / "note.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_equal_note_level_measures_are_no_gain():
    assert claim_7((0.1, 0.2, 0.3), (0.1, 0.2, 0.3))["status"] == "fail"


# --------------------------------------------------------------------------------- seeds of a beta

def test_bootstrap_ci_over_seeds_contains_the_mean_and_widens_with_seed_disagreement():
    import numpy as np

    from musicgen_cfg.experiments.bootstrap import bootstrap_ci

    prompts = np.random.default_rng(0).normal(0.3, 0.05, size=32)
    agree = np.stack([prompts, prompts])
    disagree = np.stack([prompts - 0.1, prompts + 0.1])  # same mean, the seeds differ by 0.2
    low, high = bootstrap_ci(agree, 500, 0)
    assert low < prompts.mean() < high
    wide_low, wide_high = bootstrap_ci(disagree, 500, 0)
    assert wide_low < disagree.mean() < wide_high
    assert wide_high - wide_low > 2 * (high - low)
    assert bootstrap_ci(np.full((2, 5), 0.4), 100, 0) == pytest.approx((0.4, 0.4))
    with_nan = agree.copy()
    with_nan[:, :4] = np.nan  # undefined prompts are left out, not counted as zero
    assert bootstrap_ci(with_nan, 200, 0)[0] > 0.2
    # One seed ([P] or [1, P]) is the plain prompt bootstrap, draw for draw: drawing that seed takes no random numbers
    draws = prompts[np.random.default_rng(4).integers(0, 32, size=(300, 32))].mean(axis=1)
    tail = (1 - 0.95) / 2 * 100  # 2.5 up to rounding, as bootstrap_ci computes it
    plain = tuple(float(v) for v in np.percentile(draws, [tail, 100 - tail]))
    assert bootstrap_ci(prompts, 300, 4) == bootstrap_ci(prompts[None], 300, 4) == plain
    with pytest.raises(ValueError):
        bootstrap_ci(agree[None], 10, 0)


def test_pool_seeds_merges_one_betas_seed_runs_and_leaves_single_runs_alone():
    from musicgen_cfg.experiments.pareto import pool_seeds

    base = point("cfg", 1.0, "base", 0.2, 0.3)
    seed0 = point("beta", 5.0, "beta_5", 0.2, 0.3, seed=0)
    seed1 = point("beta", 5.0, "beta_5_s1", 0.4, 0.3, seed=1)
    per_prompt = {p.run_name: {name: [stats["mean"]] * 4 for name, stats in p.metrics.items()}
                  for p in (base, seed0, seed1)}
    per_prompt[seed1.run_name]["diversity_reward"] = [0.4, 0.4, None, 0.4]
    pooled = pool_seeds([base, seed0, seed1], per_prompt, 200, 0)
    assert pooled[0] is base and len(pooled) == 2
    beta = pooled[1]
    assert beta.runs == ("beta_5_g1_t1", "beta_5_s1_g1_t1")
    reward = beta.metrics["diversity_reward"]
    assert reward["mean"] == pytest.approx((4 * 0.2 + 3 * 0.4) / 7)
    assert reward["seed_means"] == [0.2, 0.4]
    assert reward["ci_low"] < reward["mean"] < reward["ci_high"]
    assert reward["ci_low"] >= 0.2 - 1e-12 and reward["ci_high"] <= 0.4 + 1e-12
    claims = {c["claim"]: c for c in check_claims([point("beta", 0.0, "beta_0", 0.1, 0.3), beta], 3.0, {}, 0.1)}
    assert claims[3]["status"] == "pass" and "(seeds 0.2000, 0.4000)" in claims[3]["detail"]


# ----------------------------------------------------------------------------------- claims 1 to 6

def scored(p, quality, **metrics):
    """`p` with this quality (CI +- 0.01) and these other metric means."""
    p.metrics["quality"] = {"mean": quality, "ci_low": quality - 0.01, "ci_high": quality + 0.01, "num_prompts": 4}
    p.metrics.update({name: {"mean": v, "ci_low": v, "ci_high": v, "num_prompts": 4} for name, v in metrics.items()})
    return p


def claims(points, reference_gamma=3.0, hypervolumes=None):
    return {c["claim"]: c for c in check_claims(points, reference_gamma, hypervolumes or {}, 0.1)}


def test_claim_1_cfg_must_raise_quality_and_lower_diversity():
    plain, guided = scored(point("cfg", 1.0, "base", 0.4, 0.3), 0.5), scored(point("cfg", 3.0, "base", 0.3, 0.3), 0.6)
    held = claims([plain, guided])[1]
    assert held["status"] == "pass" and held["statement"] == "CFG raises quality and lowers diversity"
    assert "quality gamma=1 0.5000 [0.4900, 0.5100] -> gamma=3 0.6000" in held["detail"]
    assert claims([plain, scored(point("cfg", 3.0, "base", 0.5, 0.3), 0.6)])[1]["status"] == "fail"
    skipped = claims([plain, guided], reference_gamma=1.0)[1]
    assert skipped == {"claim": 1, "statement": "CFG raises quality and lowers diversity", "status": "skipped",
                       "detail": "needs CFG points at gamma = 1 and gamma = 1"}


def test_claim_2_the_distilled_model_needs_cfg_quality_at_half_the_passes():
    guided = scored(point("cfg", 3.0, "base", 0.3, 0.3), 0.6)
    half = scored(point("beta", 0.0, "beta_0", 0.3, 0.3), 0.595, lm_passes_per_second=5.0, seconds_per_second=0.25)
    held = claims([guided, half])[2]
    assert held["status"] == "pass" and "LM passes ratio 0.500, measured wall-time ratio 0.250" in held["detail"]
    assert claims([guided, scored(half, 0.595, lm_passes_per_second=6.0)])[2]["status"] == "fail"
    assert claims([guided, scored(point("beta", 0.0, "beta_0", 0.3, 0.3), 0.5, lm_passes_per_second=5.0)])[2][
        "status"] == "fail"  # below the CFG CI's lower end (0.59)
    assert claims([half])[2]["status"] == "skipped"


def test_claim_4_lerp_steps_against_the_trend_beyond_the_tolerance_fail():
    smooth = [scored(point("lerp", lam, f"lerp_{lam:g}", 0.2 + lam / 10, 0.3), 0.7 - lam / 10) for lam in (0, 0.5, 1)]
    held = claims(smooth)[4]
    assert held["status"] == "pass" and "quality 0.000, diversity 0.000; tolerance 0.1" in held["detail"]
    zigzag = [scored(point("lerp", lam, f"lerp_{lam:g}", d, 0.3), 0.5) for lam, d in ((0, 0.2), (0.5, 0.4), (1, 0.3))]
    assert claims(zigzag)[4]["status"] == "fail" and "diversity 0.500" in claims(zigzag)[4]["detail"]
    assert claims(smooth[:2])[4]["status"] == "skipped"


def test_claim_5_compares_the_hypervolumes():
    assert claims([], hypervolumes={"lerp": 0.2, "cfg": 0.1})[5] == {
        "claim": 5, "statement": "the LERP front dominates the CFG front (hypervolume)", "status": "pass",
        "detail": "hypervolume LERP 0.20000 vs CFG 0.10000"}
    assert claims([], hypervolumes={"lerp": 0.1, "cfg": 0.2})[5]["status"] == "fail"
    assert claims([], hypervolumes={"lerp": 0.1})[5]["status"] == "skipped"


def test_claim_6_an_intermediate_beta_above_the_lerp_front_fails():
    lerps = [scored(point("lerp", lam, f"lerp_{lam:g}", 0.2 + lam / 5, 0.3), 0.7 - lam / 5) for lam in (0, 1)]
    under = scored(point("beta", 5.0, "beta_5", 0.3, 0.3), 0.55)  # the front has quality 0.6 at diversity 0.3
    held = claims([*lerps, under])[6]
    assert held["status"] == "pass" and "beta=5 quality 0.5500 vs LERP front 0.6000 at diversity 0.3000" in held["detail"]
    assert claims([*lerps, scored(under, 0.65)])[6]["status"] == "fail"
    outside = scored(point("beta", 5.0, "beta_5", 0.5, 0.3), 0.4)  # more diverse than any merge: none dominates it
    assert "not dominated by a merge" in claims([*lerps, outside])[6]["detail"]
    assert claims(lerps)[6]["status"] == "skipped"


def test_claims_report_paired_differences_over_seeds_and_prompts_without_changing_the_verdicts():
    """Claims 3 and 7 add the paired difference of two points (seed s with seed s, same prompts) and its CI."""
    import numpy as np

    rng = np.random.default_rng(0)
    prompts = rng.uniform(0.1, 0.3, size=16)
    runs = {"beta_0_g1_t1": prompts, "beta_0_s1_g1_t1": prompts + 0.01,
            "beta_15_g1_t1": prompts + 0.05, "beta_15_s1_g1_t1": prompts + 0.07}
    per_prompt = {run: {"diversity_reward": list(v), "diversity_heldout": list(v)} for run, v in runs.items()}
    low = point("beta", 0.0, "beta_0", 0.205, 0.205, pooled_runs=("beta_0_g1_t1", "beta_0_s1_g1_t1"))
    high = point("beta", 15.0, "beta_15", 0.26, 0.26, pooled_runs=("beta_15_g1_t1", "beta_15_s1_g1_t1"))
    plain = {c["claim"]: c for c in check_claims([low, high], 3.0, {}, 0.1)}
    paired = {c["claim"]: c for c in check_claims([low, high], 3.0, {}, 0.1, per_prompt, 200, 0)}
    assert [c["status"] for c in plain.values()] == [c["status"] for c in paired.values()]
    assert "paired" not in plain[3]["detail"]
    # The seeds' differences are 0.05 and 0.06: the CI spans them, well above zero, not the prompts' spread.
    detail = paired[3]["detail"]
    assert "beta=15 - beta=0 (paired +0.0550 [+0.0500, +0.0600])" in detail
    assert "reward +0.0550 (paired +0.0550 [+0.0500, +0.0600])" in paired[7]["detail"]
    # A point without per-prompt values (or with other prompts) gets no paired figure.
    per_prompt["beta_15_s1_g1_t1"]["diversity_reward"] = list(prompts[:8])
    assert "paired" not in check_claims([low, high], 3.0, {}, 0.1, per_prompt, 200, 0)[2]["detail"]
