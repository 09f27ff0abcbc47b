"""THE null condition and THE classifier-free guidance combination (one place).

The unconditional ("null") condition is the text encoder output zeroed, with a zero attention mask,
exactly as transformers' MusicGen builds its unconditional rows. CFG batches stack the conditional
rows first, then the null rows, and run ONE forward pass over both.

    logits_gamma = uncond + gamma * (cond - uncond)     (gamma = 1: the conditional logits)
    pi_gamma = softmax(logits_gamma) ∝ pi_cond^gamma * pi_uncond^(1 - gamma)
"""

from dataclasses import dataclass

import torch


@dataclass
class Condition:
    """Text conditioning: encoder hidden states [B, S, Dt] and attention mask [B, S] (1 = token)."""

    hidden: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def to(self, device) -> "Condition":
        return Condition(self.hidden.to(device), self.mask.to(device))

    def repeat_interleave(self, repeats: int) -> "Condition":
        """Each prompt repeated `repeats` times in a row: [B, ...] -> [B * repeats, ...]."""
        return Condition(self.hidden.repeat_interleave(repeats, 0), self.mask.repeat_interleave(repeats, 0))

    def select(self, index) -> "Condition":
        return Condition(self.hidden[index], self.mask[index])


def null_condition(cond: Condition) -> Condition:
    """The unconditional condition of the same shape: zero hidden states, zero mask."""
    return Condition(torch.zeros_like(cond.hidden), torch.zeros_like(cond.mask))


def drop_condition(cond: Condition, drop: torch.Tensor) -> Condition:
    """Replace the rows where drop [B] bool is True by the null condition (condition dropout)."""
    keep = (~drop).to(cond.hidden.dtype)[:, None, None]
    return Condition(cond.hidden * keep, cond.mask * (~drop).to(cond.mask.dtype)[:, None])


def with_null(cond: Condition) -> Condition:
    """[B] -> [2B]: conditional rows first, then null rows (transformers' order)."""
    null = null_condition(cond)
    return Condition(torch.cat([cond.hidden, null.hidden]), torch.cat([cond.mask, null.mask]))


def combine(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """uncond + gamma * (cond - uncond), on raw logits (before temperature / top-k).

    Written as cond + (gamma - 1) * (cond - uncond): the same value, but bit-exactly the
    conditional logits at gamma = 1.
    """
    return cond_logits + (guidance_scale - 1.0) * (cond_logits - uncond_logits)


def split_and_combine(logits: torch.Tensor, guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [2B, ...] from a with_null batch -> (cond logits [B, ...], CFG logits [B, ...])."""
    cond_logits, uncond_logits = logits.chunk(2, dim=0)
    return cond_logits, combine(cond_logits, uncond_logits, guidance_scale)
