"""The named meter / tempo ablation (`musicgen-cfg judges ablate`). `pytest tests/experiments/test_attribute_ablation.py`"""

import json

import numpy as np
import pytest

from musicgen_cfg.errors import UserError
from musicgen_cfg.experiments.attribute_ablation import (
    METERS,
    TEMPI,
    AblationConfig,
    ablate,
    onset_rates,
    paired,
    variant_prompts,
)
from musicgen_cfg.world import symbolic
from musicgen_cfg.world.captions import DEFAULT_BPM


def test_variant_prompts_append_each_variant_to_every_base_prompt():
    variants = variant_prompts(["In D major", "Solo, played on flute"])
    assert set(variants) == {"none", *(f"in {m}" for m in METERS), *TEMPI}
    assert variants["none"] == ["In D major", "Solo, played on flute"]
    assert variants["in 6/8"] == ["In D major, in 6/8", "Solo, played on flute, in 6/8"]
    assert variants["at 60 bpm"][1] == "Solo, played on flute, at 60 bpm"


def test_paired_difference_drops_nan_prompts_pairwise():
    named, unnamed = np.array([1.0, 2.0, np.nan, 4.0]), np.array([0.0, 1.0, 5.0, np.nan])
    result = paired(named, unnamed)
    assert result["prompts"] == 2 and result["named"] == 1.5 and result["unnamed"] == 0.5
    assert result["difference"] == 1.0 and result["se"] == 0.0


def test_onset_rates_known_answer():
    """One voice with a quarter note on every beat: 1 onset per quarter; at 60 bpm that is 1 per second."""
    frames = 32
    codes = np.full((1, 4, frames), symbolic.REST)
    for start in range(0, frames, symbolic.FRAMES_PER_QUARTER):
        codes[0, 0, start] = symbolic.pitch_to_token(60)
        codes[0, 0, start + 1:start + symbolic.FRAMES_PER_QUARTER] = symbolic.HOLD
    codes = np.repeat(codes, 3, axis=0)
    rates = onset_rates(codes, ["In C major, at 60 bpm", "In C major, at 120 bpm", "In C major"])
    np.testing.assert_allclose(rates["onsets_per_quarter"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(rates["onsets_per_second"], [1.0, 2.0, DEFAULT_BPM / 60.0])


@pytest.mark.slow  # the ablation end to end on the shipped default model and judges
def test_ablation_end_to_end(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = ablate(AblationConfig(prompts=2, samples=2, gammas=(1.0,)), tmp_path / "ablation", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "ablation" / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert set(saved["meter"]) == set(METERS) and set(saved["tempo"]) == set(TEMPI)
    assert all("meter" not in p.lower() and "bpm" not in p for p in saved["base_prompts"])
    slow = saved["tempo"]["at 60 bpm"]["1"]
    assert slow["render_bpm"] == 60 and slow["onsets_per_second"]["prompts"] == 2
    for row in saved["meter"]["3/4"]["1"].values():
        assert row["prompts"] <= 2 and (row["difference"] is None or np.isfinite(row["difference"]))
    table = (tmp_path / "ablation" / "results.md").read_text()
    assert "| 3/4 | 1 |" in table and "| at 160 bpm | 1 | 160 |" in table


@pytest.mark.parametrize("gammas", [(float("nan"),), (-1.0,), ()])
def test_ablation_rejects_bad_gammas(gammas):
    with pytest.raises(UserError):
        AblationConfig(gammas=gammas)
