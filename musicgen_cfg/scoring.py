"""Teacher-forced scoring: the primitive behind the distillation loss and the REINFORCE log-probs.

    score(lm, codes [B, K, T], cond)            -> Scores(logits [B, K, T, V], mask [B, K, T])
    score(lm, codes, cond, guidance_scale=g)    -> also cfg_logits [B, K, T, V], from the SAME pass

Logits are realigned from the delay pattern, so logits[b, k, t] is the distribution of codes[b, k, t].
"""

from dataclasses import dataclass

import torch

from musicgen_cfg.cfg import Condition, split_and_combine, with_null
from musicgen_cfg.delay import revert_delay_pattern, teacher_forcing_inputs
from musicgen_cfg.lm import MusicgenLM


@dataclass
class Scores:
    logits: torch.Tensor  # [B, K, T, V] conditional logits (fp32)
    mask: torch.Tensor  # [B, K, T] bool, True where the frame is part of the sequence
    cfg_logits: torch.Tensor | None = None  # [B, K, T, V] uncond + gamma (cond - uncond)


def frame_mask(lengths: torch.Tensor | None, shape: tuple[int, int, int], device) -> torch.Tensor:
    """[B, K, T] bool: frames before each sequence's length (all True when lengths is None)."""
    batch, num_codebooks, num_frames = shape
    if lengths is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    valid = torch.arange(num_frames, device=device)[None, :] < lengths.to(device)[:, None]
    return valid[:, None, :].expand(batch, num_codebooks, num_frames)


def score(
    lm: MusicgenLM,
    codes: torch.Tensor,
    cond: Condition,
    guidance_scale: float | None = None,
    lengths: torch.Tensor | None = None,
    forward=None,
) -> Scores:
    """Teacher-force codes [B, K, T] (lengths [B] frames, optional) through the LM.

    With guidance_scale the conditional and null rows run as ONE batch [2B]; `logits` are then the
    conditional half and `cfg_logits` the guided combination. `forward` is the callable that runs
    the LM when it is wrapped (e.g. DistributedDataParallel); by default `lm` itself. Logits are
    returned in fp32 whatever the autocast dtype of the pass.
    """
    forward = forward or lm
    inputs = teacher_forcing_inputs(codes, lm.pad_id)
    if guidance_scale is None:
        logits, cfg_logits = forward(inputs, cond).float(), None
    else:  # the CFG combination in fp32: no bf16 rounding of the guided logits the KL reads
        logits, cfg_logits = split_and_combine(forward(torch.cat([inputs, inputs]), with_null(cond)).float(), guidance_scale)
        cfg_logits = revert_delay_pattern(cfg_logits)
    return Scores(revert_delay_pattern(logits), frame_mask(lengths, tuple(codes.shape), codes.device), cfg_logits)


def sequence_logprob(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over valid positions of log p(codes): logits [B, K, T, V], codes/mask [B, K, T] -> [B]."""
    token_logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, codes[..., None]).squeeze(-1)
    return (token_logp * mask).sum(dim=(1, 2))
