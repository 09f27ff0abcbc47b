"""Claim 7 of `musicgen-cfg reproduce` on hand-made points: held-out and note-level measures must all rise."""

from musicgen_cfg.experiments.reproduce import Point, check_claims, plot_front

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
