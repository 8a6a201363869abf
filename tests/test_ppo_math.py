"""The PPO maths against plain Python loops, on random tensors with padding."""

from __future__ import annotations

import math
import random

import pytest
import torch

from pacore_agent.exceptions import UsageError
from training.ppo import (
    PPOConfig,
    collate,
    compute_gae,
    explained_variance,
    masked_whiten,
    policy_loss,
    reward_at_last_token,
    split_micro_batches,
    token_mean,
    truncated_is_weights,
    value_loss,
)
from training.rollout import Sample

B, R = 6, 9


def make_mask(seed: int, batch: int = B, width: int = R) -> torch.Tensor:
    """(B, R) right-padded mask with random lengths in [1, R], one row at full length."""
    rng = random.Random(seed)
    lengths = [width] + [rng.randint(1, width) for _ in range(batch - 1)]
    return torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])


def rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def valid(row: torch.Tensor, mask_row: torch.Tensor) -> list[float]:
    return [float(x) for x, m in zip(row, mask_row, strict=True) if m > 0]


# -- GAE -------------------------------------------------------------------------------------------


def gae_loop(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    advantages = [0.0] * len(rewards)
    last = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        advantages[t] = last
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.99, 0.95), (0.9, 0.5), (1.0, 0.0), (0.5, 1.0)])
def test_gae_matches_loop(gamma: float, lam: float) -> None:
    mask = make_mask(0)
    rewards, values = rand(1, B, R), rand(2, B, R)  # garbage on padding must not leak in
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    for i in range(B):
        want_adv, want_ret = gae_loop(valid(rewards[i], mask[i]), valid(values[i], mask[i]), gamma, lam)
        n = len(want_adv)
        assert advantages[i, :n].tolist() == pytest.approx(want_adv, abs=1e-5)
        assert returns[i, :n].tolist() == pytest.approx(want_ret, abs=1e-5)
        assert advantages[i, n:].abs().sum() == 0 and returns[i, n:].abs().sum() == 0


def test_gae_with_unit_gamma_lambda_is_final_reward_minus_value() -> None:
    mask = make_mask(3)
    final = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.5])
    values = rand(4, B, R)
    advantages, returns = compute_gae(reward_at_last_token(final, mask), values, mask)
    assert torch.allclose(advantages, (final[:, None] - values) * mask, atol=1e-6)
    assert torch.allclose(returns, final[:, None] * mask, atol=1e-6)


def test_reward_at_last_token() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    token_rewards = reward_at_last_token(torch.tensor([0.5, 1.0, -2.0]), mask)
    assert token_rewards.tolist() == [[0.0, 0.5, 0.0], [0.0, 0.0, 1.0], [-2.0, 0.0, 0.0]]


# -- whitening ---------------------------------------------------------------------------------------


def test_masked_whiten_matches_loop() -> None:
    mask = make_mask(5)
    x = rand(6, B, R) * 3 + 2
    xs = [v for i in range(B) for v in valid(x[i], mask[i])]
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((v - mean) ** 2 for v in xs) / len(xs))
    got = masked_whiten(x, mask)
    for i in range(B):
        want = [(v - mean) / std for v in valid(x[i], mask[i])]
        assert valid(got[i], mask[i]) == pytest.approx(want, abs=1e-4)
    assert (got * (1 - mask)).abs().sum() == 0
    assert float(token_mean(got, mask)) == pytest.approx(0.0, abs=1e-5)


def test_masked_whiten_ignores_padding_values() -> None:
    mask = make_mask(7)
    x = rand(8, B, R)
    noisy = x + (1 - mask) * 1000.0
    assert torch.allclose(masked_whiten(x, mask), masked_whiten(noisy, mask), atol=1e-5)


# -- policy loss ---------------------------------------------------------------------------------------


def policy_loss_loop(
    logp: list[list[float]],
    old: list[list[float]],
    adv: list[list[float]],
    eps: float,
    weights: list[list[float]] | None,
    denominator: float | None,
) -> float:
    total, count = 0.0, 0
    for i in range(len(logp)):
        for t in range(len(logp[i])):
            ratio = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            loss = max(-adv[i][t] * ratio, -adv[i][t] * clipped)
            if weights is not None:
                loss *= weights[i][t]
            total += loss
            count += 1
    return total / (denominator if denominator is not None else count)


@pytest.mark.parametrize("eps", [0.2, 0.05])
@pytest.mark.parametrize("with_tis", [False, True])
@pytest.mark.parametrize("denominator", [None, 100.0])
def test_policy_loss_matches_loop(eps: float, with_tis: bool, denominator: float | None) -> None:
    mask = make_mask(9)
    old = rand(10, B, R) - 2.0
    logp = old + 0.3 * rand(11, B, R)  # ratios spread on both sides of the clip range
    adv = rand(12, B, R)
    weights = torch.rand(B, R, generator=torch.Generator().manual_seed(13)) * 2 if with_tis else None
    got = policy_loss(logp, old, adv, mask, clip_eps=eps, tis_weights=weights, num_tokens=denominator)

    def rows(t: torch.Tensor) -> list[list[float]]:
        return [valid(t[i], mask[i]) for i in range(B)]

    want = policy_loss_loop(
        rows(logp), rows(old), rows(adv), eps, rows(weights) if weights is not None else None, denominator
    )
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_policy_loss_has_no_gradient_where_clipped() -> None:
    old = torch.zeros(1, 4)
    # ratios 1.5 and 0.5 lie outside [0.8, 1.2]: a positive advantage stops pushing the first up, a
    # negative one stops pushing the second down; 1.1 and 0.9 are inside and keep their gradient
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    policy_loss(logp, old, adv, torch.ones(1, 4)).backward()
    assert logp.grad is not None
    grad = logp.grad[0].tolist()
    assert grad[0] == 0.0 and grad[1] == 0.0
    assert grad[2] == pytest.approx(-1.1 / 4) and grad[3] == pytest.approx(0.9 / 4)


def test_token_mean_over_micro_batches_equals_full_batch() -> None:
    mask = make_mask(14)
    old, logp, adv = rand(15, B, R), rand(16, B, R), rand(17, B, R)
    full = policy_loss(logp, old, adv, mask)
    n = mask.sum()
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], num_tokens=n) for s in (slice(0, 2), slice(2, B))]
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-6)


# -- value loss ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.2, 0.5, None])
def test_value_loss_matches_loop(eps: float | None) -> None:
    mask = make_mask(18)
    old = rand(19, B, R)
    values = old + 0.4 * rand(20, B, R)
    returns = rand(21, B, R)
    got = value_loss(values, old, returns, mask, clip_eps=eps)
    total, count = 0.0, 0
    for i in range(B):
        for v, o, g in zip(
            valid(values[i], mask[i]), valid(old[i], mask[i]), valid(returns[i], mask[i]), strict=True
        ):
            loss = (v - g) ** 2
            if eps is not None:
                v_clipped = o + min(max(v - o, -eps), eps)
                loss = max(loss, (v_clipped - g) ** 2)
            total += 0.5 * loss
            count += 1
    assert float(got) == pytest.approx(total / count, rel=1e-5)


# -- truncated importance sampling ---------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1.0, 2.0, 10.0])
def test_truncated_is_weights_match_loop(cap: float) -> None:
    old, rollout = rand(22, B, R), rand(23, B, R)
    got = truncated_is_weights(old, rollout, cap)
    for i in range(B):
        for t in range(R):
            want = min(math.exp(float(old[i, t]) - float(rollout[i, t])), cap)
            assert float(got[i, t]) == pytest.approx(want, rel=1e-5)
    assert not got.requires_grad


# -- metrics and batching ------------------------------------------------------------------------------


def test_explained_variance() -> None:
    mask = make_mask(24)
    returns = rand(25, B, R)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(B, R), returns, mask) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(explained_variance(rand(26, B, R), torch.ones(B, R), mask))
    # All rewards equal: GAE leaves rounding noise of ~1e-8 on the returns; no variance to explain.
    noise = 1e-8 * torch.randn(B, R, generator=torch.Generator().manual_seed(27))
    assert math.isnan(explained_variance(rand(28, B, R), noise, mask))


def test_split_micro_batches_respects_the_token_cap() -> None:
    lengths = [3, 5, 2, 8, 4, 4, 1, 12]
    groups = split_micro_batches(range(len(lengths)), lengths, max_tokens=10)
    assert [i for g in groups for i in g] == list(range(len(lengths)))  # order kept, nothing lost
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= 10 or len(g) == 1
    assert [7] in groups  # longer than the cap: alone
    assert split_micro_batches([2, 0], lengths, max_tokens=100) == [[2, 0]]


def test_collate_pads_responses() -> None:
    samples = [
        Sample([1, 2, 3], [4, 5], [-0.1, -0.2], "stop"),
        Sample([1], [6, 7, 8], [-0.3, -0.4, -0.5], "length"),
    ]
    batch = collate(samples, [1.0, 0.0])
    assert batch.sequences == [[1, 2, 3, 4, 5], [1, 6, 7, 8]]
    assert batch.prompt_lengths.tolist() == [3, 1]
    assert batch.response_ids.tolist() == [[4, 5, 0], [6, 7, 8]]
    assert batch.mask.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    assert batch.rollout_logprobs[0].tolist() == pytest.approx([-0.1, -0.2, 0.0])
    assert batch.truncated.tolist() == [False, True]


def test_bad_input_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="one logprob per response token"):
        Sample([1], [2, 3], [-0.1], "stop")
    with pytest.raises(UsageError, match="rewards"):
        collate([Sample([1], [2], [-0.1], "stop")], [1.0, 0.0])
    with pytest.raises(UsageError, match="at least one response token"):
        collate([Sample([1], [], [], "stop")], [1.0])
    with pytest.raises(UsageError, match="clip_eps"):
        PPOConfig(clip_eps=0.0)
    with pytest.raises(UsageError, match="gamma"):
        PPOConfig(gamma=1.5)


def test_config_defaults_are_the_papers() -> None:
    cfg = PPOConfig()
    assert (cfg.gamma, cfg.lam) == (1.0, 1.0)
    assert (cfg.actor_lr, cfg.critic_lr) == (2e-6, 5e-6)
    assert (cfg.problems_per_step, cfg.responses_per_problem, cfg.batch_size) == (16, 64, 1024)
    assert cfg.ppo_epochs == 1 and cfg.actor_steps == 1  # one actor update per rollout batch
    assert cfg.clip_eps == 0.2 and cfg.entropy_coef == 0.0 and cfg.tis_cap is None
