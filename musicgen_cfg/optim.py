"""THE optimiser plumbing of every trainer (distillation, pretrain, the judges' scorer, both embedders): the
warm-up-cosine LR schedule and the non-finite guard that runs before each update.

In the core because the world's scorer trains too and the world knows nothing of musicgen_cfg/training/.
Torch-free at import (torch is imported where it runs).
"""

import math

from musicgen_cfg.errors import UserError


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """LR multiplier at `step`: linear warm-up to 1 over `warmup` steps, then cosine decay to `floor` at
    `total` steps (and `floor` after). floor = 1 is a constant LR after warm-up, floor = 0 decays to zero.

    The one schedule of the project (pretrain, distillation, scorer and embedder training).
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


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
