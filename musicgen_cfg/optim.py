"""THE optimiser setup of every trainer (distillation, pretrain, the judges' scorer, both embedders):
AdamW with a linear warm-up and a cosine decay to a floor, the gradient-norm clip, and the non-finite
guard that runs before each update.

Each trainer keeps its own option names (`warmup` or `warmup_steps`, `grad_clip`, `lr_floor`: YAML keys
and flags that shipped manifests record in their rebuild commands) and declares them with
`optim_option`, so their help and bounds are the ones declared here; its config's `optim()` maps them
onto one `OptimConfig`, which `build_optimizer` turns into the optimizer and its schedule.

In the core because the world's scorer trains too and the world knows nothing of musicgen_cfg/training/.
Torch-free at import (torch is imported where it runs): the trainers' options modules import this, and
their `--help` must not load torch (tests/test_cli.py).
"""

import dataclasses
import math

from musicgen_cfg.config import REQUIRED, check_bounds, field
from musicgen_cfg.errors import UserError


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """What a trainer's optimiser is. The seed stays with each trainer: AdamW and the schedule draw nothing."""

    steps: int = field(REQUIRED, "optimizer steps", min=1)
    lr: float = field(REQUIRED, "peak AdamW learning rate (linear warm-up, then cosine decay)", gt=0.0, max=1.0)
    warmup: int = field(0, "linear warm-up steps", min=0)
    floor: float = field(0.0, "cosine decay after warm-up to floor x lr at the last step; 1.0 = constant LR "
                              "after warm-up", min=0.0, max=1.0)
    weight_decay: float = field(0.0, "AdamW weight decay", min=0.0)
    clip: float = field(math.inf, "max global grad norm; inf = no clipping", gt=0.0, finite=False)
    betas: tuple[float, float] = field((0.9, 0.999), "AdamW's decay rates of the gradient moments", min=0.0, lt=1.0)

    def __post_init__(self):  # built in code from options already checked under their own names: a safety net
        check_bounds(OptimConfig, dataclasses.asdict(self))


def optim_option(name: str, default, help: str | None = None, fixed: bool = False):
    """A trainer's config field for OptimConfig's field `name` (under the trainer's own key): the help and
    bounds declared there, the trainer's default, `help` where the trainer says more."""
    declared = OptimConfig.__dataclass_fields__[name].metadata
    return field(default, help or declared["help"], fixed=fixed, **declared["bounds"])


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier at `step`: linear warm-up to 1 over `warmup` steps, then cosine decay to `floor`
    (in [0, 1], OptimConfig's bound) at `total` steps, and `floor` after. floor = 1 is a constant LR after
    warm-up, floor = 0 decays to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(parameters, config: OptimConfig):
    """(AdamW over `parameters` in one param group, its LambdaLR warm-up-cosine schedule)."""
    import torch

    optimizer = torch.optim.AdamW(parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    # a plain function, not a callable object: LambdaLR.state_dict (trainer_state.json) then stores no state for it
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup, config.steps, config.floor))
    return optimizer, scheduler


def check_finite(step: int, terms: dict, parameters=None) -> None:
    """Stop a run whose loss, one of its terms or its gradient is NaN or inf: one line naming the step and
    the first such term (in the order given: a non-finite reward makes the REINFORCE term and the gradient
    non-finite too, so the cause comes first). `terms`: name -> float or tensor; `parameters`: also check
    the norm of their gradients.

    Called after backward and before optimizer.step() (every training loop: distillation, pretrain, the
    embedders, the scorer): the weights are still those of the last good step and no checkpoint of this step
    exists, so the latest checkpoint stays the last good one and `--resume` restarts from it. Under DDP the
    gradients are all-reduced, so every process sees a non-finite gradient and stops at the same step."""
    import torch

    if parameters is not None:
        terms = {**terms, "gradient norm": torch.nn.utils.get_total_norm(
            [p.grad for p in parameters if p.grad is not None])}
    for name, value in terms.items():
        value = torch.as_tensor(value).detach()
        if not bool(torch.isfinite(value).all()):
            shown = value[~torch.isfinite(value)].flatten()[0].item()
            raise UserError(f"step {step}: the {name} is {shown} (not finite); stopped before the update, so the "
                            f"latest checkpoint is the last good one (lower the lr or check the inputs)")
