"""The one optimiser setup (musicgen_cfg/optim.py): each trainer's defaults give the same AdamW param group and
the same LR at a few steps as the setups each trainer wrote out before, and no module builds its own.

    python -m pytest -q tests/core/test_optim.py
"""

import ast
import math
from pathlib import Path

import pytest
import torch

from musicgen_cfg.errors import UserError
from musicgen_cfg.optim import OptimConfig, build_optimizer, warmup_cosine
from musicgen_cfg.training.distillation import DistillConfig
from musicgen_cfg.training.pretrain import PretrainConfig
from musicgen_cfg.world.text_judge_options import ScorerTrainConfig
from rl.train_embedder_options import EmbedderTrainConfig

ROOT = Path(__file__).resolve().parents[2]

# Recorded from the setups before they were shared (AdamW(...) + LambdaLR(warmup_cosine(...)) in each trainer):
# the param group, the clip, and the LR at {step: lr}, warm-up, peak, cosine midpoint, last steps.
BEFORE = {
    "distillation": (DistillConfig, {"initial_lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0}, 1.0,
                     {0: 5e-06, 19: 1e-4, 20: 1e-4, 160: 5.500000000000001e-05, 299: 1.0002832446038474e-05, 300: 1e-05}),
    "pretrain": (PretrainConfig, {"initial_lr": 1e-3, "betas": (0.9, 0.95), "weight_decay": 0.01}, 1.0,
                 {0: 5e-06, 199: 1e-3, 200: 1e-3, 1600: 0.00055, 2999: 0.00010000028324754558, 3000: 1e-4}),
    "scorer": (ScorerTrainConfig, {"initial_lr": 2e-3, "betas": (0.9, 0.999), "weight_decay": 0.01}, math.inf,
               {0: 4e-05, 49: 2e-3, 50: 2e-3, 525: 1e-3, 999: 5.467919892865325e-09, 1000: 0.0}),
    "embedder": (EmbedderTrainConfig, {"initial_lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 1e-4}, math.inf,
                 {0: 2e-05, 49: 1e-3, 50: 1e-3, 425: 5e-4, 799: 4.386484431184723e-09, 800: 0.0}),
}


@pytest.mark.parametrize("trainer", BEFORE)
def test_each_trainers_defaults_give_the_setup_it_had(trainer):
    config_class, group, clip, lrs = BEFORE[trainer]
    optim = config_class().optim()
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(2))], optim)
    assert len(optimizer.param_groups) == 1 and isinstance(optimizer, torch.optim.AdamW)
    assert {key: optimizer.param_groups[0][key] for key in group} == group
    assert (optimizer.param_groups[0]["eps"], optimizer.param_groups[0]["amsgrad"]) == (1e-8, False)
    assert optim.clip == clip
    base = optimizer.param_groups[0]["initial_lr"]
    assert {step: base * scheduler.lr_lambdas[0](step) for step in lrs} == pytest.approx(lrs, rel=1e-12, abs=1e-20)
    assert scheduler.get_last_lr() == [lrs[0]]
    assert scheduler.state_dict()["lr_lambdas"] == [None]  # nothing of the schedule in trainer_state.json


def test_a_trainers_own_keys_reach_the_setup():
    optim = DistillConfig(steps=10, lr=3e-4, warmup=2, lr_floor=0.5, weight_decay=0.1, grad_clip=math.inf).optim()
    assert optim == OptimConfig(steps=10, lr=3e-4, warmup=2, floor=0.5, weight_decay=0.1, clip=math.inf)
    assert ScorerTrainConfig(warmup_steps=7).optim().warmup == EmbedderTrainConfig(warmup_steps=7).optim().warmup == 7


def test_the_bounds_are_declared_once_and_checked():
    """A trainer's option carries OptimConfig's bounds under its own key; OptimConfig checks itself."""
    for config_class, key, name in [(DistillConfig, "lr_floor", "floor"), (PretrainConfig, "grad_clip", "clip"),
                                    (ScorerTrainConfig, "warmup_steps", "warmup"), (EmbedderTrainConfig, "lr", "lr")]:
        assert (config_class.__dataclass_fields__[key].metadata["bounds"]
                == OptimConfig.__dataclass_fields__[name].metadata["bounds"])
    with pytest.raises(UserError, match=r"floor must be in \[0, 1\], got 1.5"):
        OptimConfig(steps=1, lr=1e-3, floor=1.5)
    with pytest.raises(UserError, match="clip must be > 0"):
        OptimConfig(steps=1, lr=1e-3, clip=0.0)


TRAINERS = ("musicgen_cfg/training/distillation.py", "musicgen_cfg/training/pretrain.py", "musicgen_cfg/world/text_judge.py",
            "rl/train_embedder.py", "rl/train_note_embedder.py")


def called_names(path: Path) -> set[str]:
    calls = [node.func for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]
    return {func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "") for func in calls}


def test_every_trainer_uses_the_shared_setup_and_none_builds_its_own():
    for trainer in TRAINERS:
        assert {"build_optimizer", "check_finite"} <= called_names(ROOT / trainer), trainer
    own = [str(path.relative_to(ROOT)) for package in ("musicgen_cfg", "rl", "merging", "app", "bench")
           for path in sorted((ROOT / package).rglob("*.py"))
           if path != ROOT / "musicgen_cfg/optim.py" and called_names(path) & {"AdamW", "LambdaLR", "warmup_cosine"}]
    assert own == []


@pytest.mark.parametrize("floor", [0.0, 0.1, 1.0])
def test_warmup_cosine_schedule(floor):
    warmup, total = 5, 25
    values = [warmup_cosine(s, warmup, total, floor) for s in range(total + 3)]
    assert values[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert values[warmup] == 1.0 and values[total] == pytest.approx(floor) and values[-1] == pytest.approx(floor)
    decay = values[warmup : total + 1]
    assert all(a >= b for a, b in zip(decay, decay[1:]))  # non-increasing after warm-up
    assert values[(warmup + total) // 2] == pytest.approx(floor + (1 - floor) / 2)  # the cosine's midpoint
    if floor == 1.0:
        assert set(values[warmup:]) == {1.0}  # constant
