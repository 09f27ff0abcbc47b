"""Tests for rl/diversity.py: the pairwise reward, the baselines and the REINFORCE estimator.

Run: .venv/bin/python -m pytest -q tests/rl/test_diversity.py
"""

import itertools

import pytest
import torch

from rl.diversity import advantages, pairwise_diversity, reinforce_surrogate


def test_identical_orthogonal_opposite_rewards():
    e = torch.tensor([1.0, 2.0, -0.5])
    identical = torch.stack([e, 3.0 * e])[None]  # scale must not matter
    orthogonal = torch.tensor([[[2.0, 0.0], [0.0, 0.5]]])
    opposite = torch.stack([e, -0.1 * e])[None]
    assert torch.allclose(pairwise_diversity(identical), torch.zeros(1, 2), atol=1e-6)
    assert torch.allclose(pairwise_diversity(orthogonal), torch.ones(1, 2), atol=1e-6)
    assert torch.allclose(pairwise_diversity(opposite), torch.full((1, 2), 2.0), atol=1e-6)


def test_reward_is_mean_cosine_distance_to_siblings():
    torch.manual_seed(0)
    emb = torch.randn(3, 4, 8)
    rewards = pairwise_diversity(emb)
    assert rewards.shape == (3, 4)
    assert (rewards >= 0).all() and (rewards <= 2).all()
    cos = torch.nn.functional.cosine_similarity
    for p, i in itertools.product(range(3), range(4)):
        expected = sum(1 - cos(emb[p, i], emb[p, j], dim=0) for j in range(4) if j != i) / 3
        assert rewards[p, i].item() == pytest.approx(expected.item(), abs=1e-5)
    # Symmetric in the pair and equivariant to reordering the siblings.
    pair = pairwise_diversity(emb[:, :2])
    assert torch.allclose(pair[:, 0], pair[:, 1])
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(pairwise_diversity(emb[:, perm]), rewards[:, perm], atol=1e-6)


def test_reward_rejects_single_generation():
    with pytest.raises(ValueError, match="G >= 2"):
        pairwise_diversity(torch.randn(2, 1, 4))


def _pair_distances(emb):
    unit = torch.nn.functional.normalize(emb, dim=-1)
    return 1 - unit @ unit.transpose(1, 2)


def test_loo_baseline_is_mean_distance_among_other_siblings():
    torch.manual_seed(1)
    emb = torch.randn(2, 5, 6)
    rewards = pairwise_diversity(emb)
    dist = _pair_distances(emb)
    adv = advantages(rewards, "loo")
    for p, i in itertools.product(range(2), range(5)):
        others = [j for j in range(5) if j != i]
        b = torch.stack([dist[p, j, k] for j, k in itertools.combinations(others, 2)]).mean()
        assert adv[p, i].item() == pytest.approx(2 * (rewards[p, i] - b).item(), abs=1e-5)


def test_batch_mean_baseline_leaves_own_prompt_out():
    rewards = torch.tensor([[0.2, 0.4], [1.0, 1.2], [0.6, 0.6]])
    adv = advantages(rewards, "batch_mean")
    assert adv[0, 0].item() == pytest.approx(2 * (0.2 - (1.0 + 1.2 + 0.6 + 0.6) / 4))
    assert adv[1, 1].item() == pytest.approx(2 * (1.2 - (0.2 + 0.4 + 0.6 + 0.6) / 4))


def test_advantage_options_and_errors():
    rewards = torch.rand(4, 3) * 2
    assert torch.allclose(advantages(rewards, "none"), 2 * rewards)
    normalized = advantages(rewards, "loo", normalize=True)
    assert normalized.std().item() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="G >= 3"):
        advantages(torch.rand(4, 2), "loo")
    with pytest.raises(ValueError, match="P >= 2"):
        advantages(torch.rand(1, 3), "batch_mean")
    with pytest.raises(ValueError, match="unknown baseline"):
        advantages(rewards, "median")


def test_surrogate_gradient_is_mean_of_advantage_times_score():
    logits = torch.randn(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], requires_grad=True)
    reinforce_surrogate(logits, adv).backward()
    assert torch.allclose(logits.grad, adv.detach() / 6)
    assert adv.grad is None  # advantages are constants
    with pytest.raises(ValueError, match="shape mismatch"):
        reinforce_surrogate(logits, adv[:, :2])


# --- Toy bandit: one categorical "policy" over K actions, each action has a fixed embedding. ----------
NUM_ACTIONS, GROUP, DRAWS = 16, 4, 40_000


def _bandit():
    """Embeddings share a common direction, so sibling distances concentrate around a positive mean as
    for real generations of one prompt. That is the regime where a baseline pays off; with widely spread
    rewards and G = 3 (one pair left for the LOO baseline) it can add variance instead."""
    gen = torch.Generator().manual_seed(3)
    logits = 0.5 * torch.randn(NUM_ACTIONS, generator=gen)
    action_embeddings = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.5 * torch.randn(NUM_ACTIONS, 4, generator=gen)
    return logits, action_embeddings


def _exact_gradient(logits, action_embeddings):
    """grad of E[reward] = sum_{a,b} p_a p_b (1 - cos(e_a, e_b)) for two independent draws."""
    theta = logits.clone().requires_grad_(True)
    probs = theta.softmax(-1)
    objective = probs @ _pair_distances(action_embeddings[None])[0] @ probs
    (grad,) = torch.autograd.grad(objective, theta)
    return grad


def _per_draw_gradients(logits, action_embeddings, baseline):
    """One REINFORCE estimate per draw of GROUP siblings: [DRAWS, K]. Each draw is one "prompt" with its
    own copy of the logits, so one backward pass yields every draw's gradient."""
    gen = torch.Generator().manual_seed(4)
    theta = logits.expand(DRAWS, NUM_ACTIONS).clone().requires_grad_(True)
    actions = torch.multinomial(logits.softmax(-1), DRAWS * GROUP, replacement=True, generator=gen)
    actions = actions.view(DRAWS, GROUP)
    seq_logprob = theta.log_softmax(-1).gather(1, actions)  # [DRAWS, GROUP]
    rewards = pairwise_diversity(action_embeddings[actions])
    reinforce_surrogate(seq_logprob, advantages(rewards, baseline)).backward()
    return theta.grad * DRAWS  # the surrogate averages over draws; undo that to get each draw's estimate


@pytest.mark.parametrize("baseline", ["none", "loo", "batch_mean"])
def test_reinforce_is_unbiased_on_categorical_bandit(baseline):
    logits, action_embeddings = _bandit()
    exact = _exact_gradient(logits, action_embeddings)
    estimates = _per_draw_gradients(logits, action_embeddings, baseline)
    mean = estimates.mean(0)
    standard_error = estimates.std(0) / DRAWS**0.5
    assert torch.all((mean - exact).abs() < 4 * standard_error + 1e-4), (mean, exact, standard_error)
    # Tight enough to catch a wrong scale (e.g. forgetting that each pair credits both members).
    assert (mean - exact).norm() < 0.1 * exact.norm()


def test_loo_baseline_reduces_variance():
    logits, action_embeddings = _bandit()
    var_none = _per_draw_gradients(logits, action_embeddings, "none").var(0).sum()
    var_loo = _per_draw_gradients(logits, action_embeddings, "loo").var(0).sum()
    assert var_loo < 0.5 * var_none


