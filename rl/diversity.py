"""Idea 2 of the paper: reward the student for generations that differ from each other.

For each prompt, G >= 2 generations are sampled from the student, decoded to audio and embedded by a
music embedder E (`rl/embedders.py`). Generation i of a prompt earns

    r_i = mean over its siblings j != i of (1 - cos(E(y_i), E(y_j)))          in [0, 2]

and the student follows the REINFORCE (score-function) gradient of E[r]. The trainer in
`musicgen_cfg/training/distillation.py` calls, per batch of P prompts x G generations:

    rewards, music = diversity_rewards(codes, prompts, G, ...)   # rl/reward.py: per prompt, decode -> gate
                                                          # -> embed -> pairwise_diversity [P, G, D] -> [P, G]
    adv = advantages(rewards, config.baseline, config.normalize)
    loss = distill_loss - beta * reinforce_surrogate(seq_logprob, adv)

Why the advantages are not the textbook ones: the reward is *pairwise*. r_i depends on the siblings
y_j and each sibling's r_j depends on y_i, so (a) the pair (i, j) must be credited to both of its
members, which doubles the naive estimate, and (b) the usual leave-one-out baseline
mean_{j != i} r_j contains y_i and biases the gradient (with G = 2 it even cancels it exactly:
r_1 == r_2). `advantages` below handles both; tests/rl/test_diversity.py checks unbiasedness against the
exact gradient on a categorical bandit. Run those tests with `pytest tests/rl/test_diversity.py`.
"""

import numpy as np
import torch
import torch.nn.functional as F

BASELINES = ("loo", "batch_mean", "none")


def pairwise_diversity(embeddings: torch.Tensor, music: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine distance of each generation to its siblings.

    embeddings: [P, G, D] (P prompts, G >= 2 generations each; need not be unit vectors; an all-zero
    vector counts as orthogonal to everything). music: optional bool [P, G], False for a degenerate
    generation (the gate of rl/reward.py): every pair it is part of counts as distance 0, so it earns
    0 and cannot raise its siblings' rewards by being far from them. The divisor stays G - 1, which
    keeps d'_ij = music_i music_j d_ij a symmetric pairwise reward, as `advantages` assumes.
    Returns rewards [P, G] in [0, 2]: 0 when all siblings embed identically, 1 when orthogonal,
    2 when opposite. No gradient flows to the embeddings' producer on purpose: the reward is a score,
    not a differentiable target.
    """
    if embeddings.dim() != 3 or embeddings.shape[1] < 2:
        raise ValueError(f"expected embeddings [P, G >= 2, D], got {tuple(embeddings.shape)}")
    unit = F.normalize(embeddings.detach().float(), dim=-1)
    distance = 1.0 - unit @ unit.transpose(1, 2)  # [P, G, G]; diagonal is 0 up to rounding
    distance = distance.clamp(0.0, 2.0)
    distance = distance * (1.0 - torch.eye(unit.shape[1], device=unit.device))
    if music is not None:
        if music.shape != embeddings.shape[:2]:
            raise ValueError(f"music mask {tuple(music.shape)} does not match embeddings {tuple(embeddings.shape)}")
        keep = music.to(device=unit.device, dtype=unit.dtype)
        distance = distance * keep[:, :, None] * keep[:, None, :]
    return distance.sum(dim=2) / (unit.shape[1] - 1)


def vendi_from_similarity(similarity) -> float:
    """exp(entropy of the eigenvalues of K / n) for a PSD similarity matrix K [n, n] with unit diagonal.

    The effective number of distinct items: 1 when all are identical (K all ones), n when all are
    unrelated (K = identity).
    """
    k = np.asarray(similarity, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"expected a square similarity matrix [n >= 1, n], got {k.shape}")
    eigenvalues = np.clip(np.linalg.eigvalsh(k / len(k)), 0.0, None)  # PSD up to rounding
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def advantages(
    rewards: torch.Tensor, baseline: str = "loo", normalize: bool = False, eps: float = 1e-8
) -> torch.Tensor:
    """Per-generation credit for `reinforce_surrogate`, for rewards from `pairwise_diversity`.

    rewards: [P, G]. Returns [P, G] such that mean(adv * grad log p(y)) is an unbiased estimate of
    grad E[mean reward] (before `normalize`). Each pair (i, j) contributes to both members' gradients,
    hence the factor 2 on every option:

    - "none":       2 * r_i.
    - "loo":        2 * (r_i - b_i), b_i = mean distance among the siblings *other than i*
                    = (sum_j r_j - 2 r_i) / (G - 2), which does not depend on y_i. Algebraically
                    2 * G / (G - 2) * (r_i - mean_j r_j). Needs G >= 3: with two siblings nothing
                    independent of y_i is left to compare with.
    - "batch_mean": 2 * (r_i - mean reward of the *other* prompts' generations); including the own
                    prompt would correlate the baseline with y_i. Needs P >= 2.

    normalize divides by the standard deviation of the advantages over the whole batch (not
    re-centred, so "none" keeps its sign). This fixes the step size across batches at the price of a
    small bias, as is common practice.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"expected rewards [P, G >= 2], got {tuple(rewards.shape)}")
    rewards = rewards.detach()
    num_prompts, group = rewards.shape
    if baseline == "none":
        adv = 2.0 * rewards
    elif baseline == "loo":
        if group < 3:
            raise ValueError(
                "the leave-one-out baseline needs G >= 3 generations per prompt for the pairwise "
                "diversity reward (with G = 2 both siblings share one reward); use 'batch_mean' or 'none'"
            )
        adv = 2.0 * group / (group - 2) * (rewards - rewards.mean(dim=1, keepdim=True))
    elif baseline == "batch_mean":
        if num_prompts < 2:
            raise ValueError("the batch_mean baseline needs P >= 2 prompts in the batch; use 'loo' or 'none'")
        prompt_sums = rewards.sum(dim=1, keepdim=True)  # [P, 1]
        others_mean = (prompt_sums.sum() - prompt_sums) / ((num_prompts - 1) * group)
        adv = 2.0 * (rewards - others_mean)
    else:
        raise ValueError(f"unknown baseline '{baseline}' (choose from {', '.join(BASELINES)})")
    if normalize:
        adv = adv / (adv.std() + eps) if adv.numel() > 1 else adv
    return adv


def reinforce_surrogate(seq_logprob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """Scalar whose gradient is the REINFORCE estimate of grad E[reward].

    seq_logprob: [P, G] log-probability of each sampled code sequence under the student (sum over
    frames and codebooks of the valid positions), with grad. advantages: [P, G] from `advantages`,
    treated as constants. Scale: the mean over the P * G sequences, i.e. the gradient estimates the
    gradient of the *mean* reward per generation; maximise it (the trainer subtracts beta times it
    from the loss).
    """
    if seq_logprob.shape != advantages.shape:
        raise ValueError(
            f"shape mismatch: seq_logprob {tuple(seq_logprob.shape)} vs advantages {tuple(advantages.shape)}"
        )
    return (advantages.detach().to(seq_logprob.dtype) * seq_logprob).mean()
