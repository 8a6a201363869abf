"""PPO for a PaCoRe synthesizer, top to bottom.

The paper trains the synthesizer with strict on-policy PPO: GAE with gamma = lambda = 1, no KL penalty,
no entropy bonus, one actor update per rollout batch, and a critic that is a separate copy of the base
model with a scalar value head. This file spells that out:

1. `PPOConfig`: every knob, with the paper's defaults.
2. The maths, as pure functions of tensors: `compute_gae`, `policy_loss`, `value_loss`,
   `truncated_is_weights`, `masked_whiten`, `explained_variance` and their small helpers.
3. The critic: `ValueModel`, the actor's base transformer with a scalar head.
4. `PPOTrainer.step`: score the rollout (old logprobs, old values), GAE, the actor update, the critic
   update(s), metrics named like cleanrl's (``losses/*``, ``charts/*``).

Token-level tensors have shape (B, R): B responses, R the longest response. ``mask`` is 1.0 on real
response tokens, which come first in each row, and 0.0 on the padding after them. Prompt tokens never
enter a loss. Position r of a row is the state "prompt + the first r response tokens", whose action is
response token r: its logprob, its value and its advantage all sit at (row, r).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from pacore_agent.exceptions import UsageError
from training.rollout import Sample

__all__ = [
    "PPOConfig",
    "PPOTrainer",
    "RolloutTensors",
    "ValueModel",
    "collate",
    "compute_gae",
    "explained_variance",
    "masked_mean",
    "masked_whiten",
    "policy_loss",
    "reward_at_last_token",
    "split_micro_batches",
    "token_mean",
    "truncated_is_weights",
    "value_loss",
]


# ----------------------------------------------------------------------------------------------------
# 1. Configuration


@dataclass(frozen=True, slots=True)
class PPOConfig:
    """PPO settings; the defaults are the PaCoRe paper's synthesizer training setup."""

    actor_lr: float = 2e-6
    """Actor (policy) learning rate (AdamW)."""
    critic_lr: float = 5e-6
    """Critic (value model) learning rate (AdamW)."""
    problems_per_step: int = 16
    """Problems (prompts) per rollout batch."""
    responses_per_problem: int = 64
    """Responses sampled per problem; a rollout batch holds problems_per_step x responses_per_problem."""
    gamma: float = 1.0
    """Discount factor of GAE."""
    lam: float = 1.0
    """GAE lambda; with gamma = lambda = 1 the advantage is the final reward minus the value."""
    clip_eps: float = 0.2
    """Policy ratio clip: the surrogate uses clamp(ratio, 1 - clip_eps, 1 + clip_eps)."""
    value_clip_eps: float | None = 0.2
    """Value clip around the rollout-time value; None trains the critic with a plain squared error."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean and unit variance over the batch's response tokens."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (the paper uses none)."""
    tis_cap: float | None = None
    """Truncated importance sampling: when set, each token's policy loss is multiplied by
    min(exp(old_logprob - rollout_logprob), tis_cap), correcting for the rollout engine sampling from a
    slightly different distribution than the trainer computes. None (the default) turns it off."""
    ppo_epochs: int = 1
    """Passes over each rollout batch. 1 keeps training strictly on-policy."""
    actor_steps: int = 1
    """Actor optimizer steps per pass: the batch is split into this many mini-batches."""
    critic_steps: int = 1
    """Critic optimizer steps per pass: the batch is split into this many mini-batches (ORZ-style
    setups give the critic more steps than the actor)."""
    max_tokens_per_micro_batch: int = 16384
    """Cap on the padded tokens (rows x longest row) of one forward/backward; gradients accumulate over
    the micro-batches of a mini-batch before its optimizer step."""
    max_grad_norm: float = 1.0
    """Gradient norm clip applied before each optimizer step."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay of the actor and the critic."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on long responses)."""
    bf16: Literal["auto", "on", "off"] = "auto"
    """bf16 autocast for forward passes: auto (where the device supports it), on (require it), off."""
    temperature: float = 1.0
    """The rollout temperature; the trainer divides logits by it so its logprobs match the sampler's."""
    seed: int = 0
    """Seeds the shuffling of mini-batches."""

    def __post_init__(self) -> None:
        positive = {
            "actor_lr": self.actor_lr,
            "critic_lr": self.critic_lr,
            "problems_per_step": self.problems_per_step,
            "responses_per_problem": self.responses_per_problem,
            "clip_eps": self.clip_eps,
            "ppo_epochs": self.ppo_epochs,
            "actor_steps": self.actor_steps,
            "critic_steps": self.critic_steps,
            "max_tokens_per_micro_batch": self.max_tokens_per_micro_batch,
            "max_grad_norm": self.max_grad_norm,
            "temperature": self.temperature,
        }
        for name, value in positive.items():
            if value <= 0:
                raise UsageError(f"PPOConfig.{name} must be positive, got {value}")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise UsageError(f"PPOConfig.gamma and lam must be within [0, 1], got {self.gamma}, {self.lam}")
        if self.value_clip_eps is not None and self.value_clip_eps <= 0:
            raise UsageError(f"PPOConfig.value_clip_eps must be positive or None, got {self.value_clip_eps}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise UsageError(f"PPOConfig.tis_cap must be positive or None, got {self.tis_cap}")
        if self.entropy_coef < 0:
            raise UsageError(f"PPOConfig.entropy_coef must be >= 0, got {self.entropy_coef}")
        if self.weight_decay < 0:
            raise UsageError(f"PPOConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.bf16 not in ("auto", "on", "off"):
            raise UsageError(f"PPOConfig.bf16 must be auto, on or off, got {self.bf16!r}")

    def uses_bf16(self, device: torch.device) -> bool:
        """Whether forward passes on ``device`` run under bf16 autocast.

        Raises:
            UsageError: ``bf16`` is ``on`` and ``device`` cannot run bf16.
        """
        supported = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if self.bf16 == "on" and not supported:
            raise UsageError(
                f"--bf16 on needs a CUDA device with bf16 support; {device} has none (use auto or off)"
            )
        return self.bf16 != "off" and supported

    @property
    def batch_size(self) -> int:
        """Responses per rollout batch: problems_per_step x responses_per_problem."""
        return self.problems_per_step * self.responses_per_problem


# ----------------------------------------------------------------------------------------------------
# 2. The maths: pure functions of (B, R) tensors


def token_mean(x: Tensor, mask: Tensor, num_tokens: float | Tensor | None = None) -> Tensor:
    """Sum of ``x`` over the masked tokens divided by ``num_tokens`` (default: the masked token count).

    Passing the token count of a whole mini-batch lets micro-batch losses add up to the mini-batch's
    token mean under gradient accumulation.
    """
    denominator = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=x.dtype)
    return (x * mask).sum() / denominator.clamp(min=1.0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the tokens where ``mask`` is 1."""
    return token_mean(x, mask)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Shift and scale ``x`` to zero mean and unit variance over the masked tokens; padding becomes 0.

    The variance is the population variance (divided by the token count).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def reward_at_last_token(rewards: Tensor, mask: Tensor) -> Tensor:
    """Token-level rewards: each response's scalar reward on its last token, 0 elsewhere.

    Args:
        rewards: (B,) one reward per response.
        mask: (B, R) response-token mask; every row has at least one token.

    Returns:
        (B, R) token rewards.
    """
    last = mask.sum(dim=1).long() - 1  # (B,)
    token_rewards = torch.zeros_like(mask, dtype=rewards.dtype)
    token_rewards[torch.arange(mask.shape[0]), last] = rewards
    return token_rewards


@torch.no_grad()
def compute_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over token sequences.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V = 0 after a
    response's last token (the episode ends there).

    Args:
        rewards: (B, R) token rewards (the reward usually sits on the last response token).
        values: (B, R) the critic's value of each state.
        mask: (B, R) 1.0 on response tokens, which come first in each row, 0.0 on the padding after them.
        gamma: Discount factor.
        lam: GAE lambda.

    Returns:
        advantages (B, R) and returns = advantages + values (B, R), both 0 on padding.
    """
    rewards, values = rewards * mask, values * mask  # padding contributes nothing and ends the episode
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(length)):
        next_values = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    returns = advantages + values
    return advantages * mask, returns * mask


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    tis_weights: Tensor | None = None,
    num_tokens: float | Tensor | None = None,
) -> Tensor:
    """PPO's clipped surrogate, per token, averaged over the masked tokens.

    Args:
        logprobs: (B, R) logprobs of the response tokens under the policy being updated.
        old_logprobs: (B, R) the same under the policy that the advantages belong to.
        advantages: (B, R) advantages.
        mask: (B, R) response-token mask.
        clip_eps: The ratio is clipped to [1 - clip_eps, 1 + clip_eps].
        tis_weights: (B, R) optional truncated importance weights multiplying each token's loss.
        num_tokens: Denominator of the token mean (default: the tokens in ``mask``).

    Returns:
        The scalar loss to minimise.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    pg_loss_unclipped = -advantages * ratio
    pg_loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    pg_loss = torch.max(pg_loss_unclipped, pg_loss_clipped)  # (B, R)
    if tis_weights is not None:
        pg_loss = pg_loss * tis_weights
    return token_mean(pg_loss, mask, num_tokens)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_eps: float | None = 0.2,
    num_tokens: float | Tensor | None = None,
) -> Tensor:
    """Half the (clipped) squared error of the values against the returns, averaged over masked tokens.

    Args:
        values: (B, R) the critic's current values.
        old_values: (B, R) the values at rollout time.
        returns: (B, R) GAE returns.
        mask: (B, R) response-token mask.
        clip_eps: When set, the loss is max(unclipped, clipped) error, with the clipped value kept within
            ``clip_eps`` of ``old_values``; None gives a plain squared error.
        num_tokens: Denominator of the token mean (default: the tokens in ``mask``).

    Returns:
        The scalar loss to minimise.
    """
    v_loss = (values - returns) ** 2
    if clip_eps is not None:
        v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        v_loss = torch.max(v_loss, (v_clipped - returns) ** 2)
    return 0.5 * token_mean(v_loss, mask, num_tokens)


def truncated_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance weights min(pi_old / pi_rollout, cap) per token, with no gradient."""
    return torch.exp(old_logprobs - rollout_logprobs).clamp(max=cap).detach()


_FLAT_RETURNS_VARIANCE = 1e-8
"""Below this variance the returns count as constant: GAE leaves rounding noise of order 1e-8 on returns
whose rewards are all equal, and dividing by its square made explained variance -1e12."""


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over masked tokens; nan when the returns do not vary."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    if var_returns.item() < _FLAT_RETURNS_VARIANCE:
        return math.nan
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1.0 - var_residual / var_returns)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dimension: (..., V) -> (...)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def split_micro_batches(indices: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group ``indices``, in order, into micro-batches of at most ``max_tokens`` padded tokens.

    A micro-batch costs (its rows) x (its longest row); a row longer than ``max_tokens`` on its own
    still gets a micro-batch.
    """
    micro_batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in indices:
        if current and (len(current) + 1) * max(longest, lengths[i]) > max_tokens:
            micro_batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    if current:
        micro_batches.append(current)
    return micro_batches


# ----------------------------------------------------------------------------------------------------
# 3. The rollout batch as tensors, and the critic


@dataclass(frozen=True, slots=True)
class RolloutTensors:
    """A rollout batch laid out for training; token-level fields are (B, R), R = the longest response.

    Attributes:
        sequences: Prompt + response token ids of each sample.
        prompt_lengths: (B,) prompt lengths.
        response_ids: (B, R) response token ids, 0 on padding.
        rollout_logprobs: (B, R) the rollout engine's logprobs, 0 on padding.
        mask: (B, R) 1.0 on response tokens, 0.0 on padding.
        rewards: (B,) one scalar reward per response.
        truncated: (B,) True where the response hit the length cap.
    """

    sequences: list[list[int]]
    prompt_lengths: Tensor
    response_ids: Tensor
    rollout_logprobs: Tensor
    mask: Tensor
    rewards: Tensor
    truncated: Tensor


def collate(
    samples: Sequence[Sample], rewards: Sequence[float], device: torch.device | str = "cpu"
) -> RolloutTensors:
    """Lay out samples and their rewards as `RolloutTensors` (responses right-padded to the longest)."""
    if len(samples) != len(rewards):
        raise UsageError(f"got {len(samples)} samples but {len(rewards)} rewards")
    if not samples:
        raise UsageError("a rollout batch needs at least one sample")
    if any(not s.response_ids for s in samples):
        raise UsageError("every sample needs at least one response token (its reward sits on the last one)")
    width = max(len(s.response_ids) for s in samples)

    def pad(row: Sequence[float], value: float = 0.0) -> list[float]:
        return list(row) + [value] * (width - len(row))

    return RolloutTensors(
        sequences=[list(s.prompt_ids) + list(s.response_ids) for s in samples],
        prompt_lengths=torch.tensor([len(s.prompt_ids) for s in samples], device=device),
        response_ids=torch.tensor([pad(s.response_ids, 0) for s in samples], dtype=torch.long, device=device),
        rollout_logprobs=torch.tensor([pad(s.logprobs) for s in samples], dtype=torch.float32, device=device),
        mask=torch.tensor([pad([1.0] * len(s.response_ids)) for s in samples], device=device),
        rewards=torch.tensor(list(rewards), dtype=torch.float32, device=device),
        truncated=torch.tensor([s.finish_reason == "length" for s in samples], device=device),
    )


class ValueModel(nn.Module):
    """The critic: a base transformer (no LM head) with a scalar value head on every position.

    Args:
        backbone: A transformers base model returning ``last_hidden_state`` (e.g. ``LlamaModel``).
        hidden_size: Width of the backbone's hidden states.
    """

    def __init__(self, backbone: Any, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        dtype = next(backbone.parameters()).dtype  # a bf16 backbone gets a bf16 head
        self.value_head = nn.Linear(hidden_size, 1, dtype=dtype)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_actor(cls, actor: Any) -> ValueModel:
        """A critic initialised from the actor's base weights (a separate copy of them)."""
        backbone = copy.deepcopy(actor.base_model)
        return cls(backbone, actor.config.hidden_size).to(next(actor.parameters()).device)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Values of every position: (B, T) token ids -> (B, T) values."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        values: Tensor = self.value_head(hidden.last_hidden_state).squeeze(-1)  # (B, T, H) -> (B, T)
        return values.float()


# ----------------------------------------------------------------------------------------------------
# 4. The trainer


class PPOTrainer:
    """Updates an actor (causal LM) and its critic from rollout batches.

    Args:
        actor: A transformers causal LM; the policy.
        critic: The value model; by default a `ValueModel` initialised from the actor's base weights.
        config: PPO settings.
    """

    def __init__(self, actor: Any, critic: ValueModel | None = None, config: PPOConfig | None = None) -> None:
        self.config = config if config is not None else PPOConfig()
        self.actor = actor
        self.critic = critic if critic is not None else ValueModel.from_actor(actor)
        self.device = next(actor.parameters()).device
        self.actor_optimizer = _adamw(actor, self.config.actor_lr, self.config.weight_decay)
        self.critic_optimizer = _adamw(self.critic, self.config.critic_lr, self.config.weight_decay)
        if self.config.gradient_checkpointing:
            _enable_checkpointing(self.actor)
            _enable_checkpointing(self.critic.backbone)
        self.use_bf16 = self.config.uses_bf16(self.device)
        self.generator = torch.Generator().manual_seed(self.config.seed)

    # -- forward passes over one micro-batch ---------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, batch: RolloutTensors, rows: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded inputs of ``rows`` and where to read their response positions.

        Returns input ids (b, T), attention mask (b, T), and (b, R) column indices into T.
        """
        seqs = [batch.sequences[i] for i in rows]
        width = max(len(s) for s in seqs)
        input_ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=self.device)  # (b, T)
        attention_mask = torch.tensor(
            [[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device
        )  # (b, T)
        offsets = torch.arange(batch.mask.shape[1], device=self.device)  # (R,)
        # the logits (and hidden state) at column p see tokens 0..p and predict token p + 1
        columns = batch.prompt_lengths[rows, None] - 1 + offsets[None, :]  # (b, R)
        return input_ids, attention_mask, columns.clamp(max=width - 1)

    def _actor_forward(self, batch: RolloutTensors, rows: list[int]) -> tuple[Tensor, Tensor]:
        """Logprobs and entropies of the response tokens of ``rows`` under the actor: (b, R) each."""
        input_ids, attention_mask, columns = self._inputs(batch, rows)
        with self._autocast():
            logits = self.actor(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        row_index = torch.arange(len(rows), device=self.device)[:, None]  # (b, 1)
        logits = logits[row_index, columns].float() / self.config.temperature  # (b, T, V) -> (b, R, V)
        logprobs = torch.log_softmax(logits, dim=-1)
        token_logprobs = logprobs.gather(-1, batch.response_ids[rows].unsqueeze(-1)).squeeze(-1)  # (b, R)
        if self.config.entropy_coef > 0:
            entropy = entropy_from_logits(logits)
        else:
            with torch.no_grad():
                entropy = entropy_from_logits(logits)
        return token_logprobs, entropy

    def _critic_forward(self, batch: RolloutTensors, rows: list[int]) -> Tensor:
        """Values of the response positions of ``rows``: (b, R)."""
        input_ids, attention_mask, columns = self._inputs(batch, rows)
        with self._autocast():
            values: Tensor = self.critic(input_ids, attention_mask)  # (b, T)
        return values.gather(1, columns)  # (b, R)

    def _micro_batches(self, batch: RolloutTensors, rows: Sequence[int]) -> list[list[int]]:
        lengths = [len(s) for s in batch.sequences]
        return split_micro_batches(rows, lengths, self.config.max_tokens_per_micro_batch)

    def _mini_batches(self, batch_size: int, steps: int) -> Iterator[list[int]]:
        order = torch.randperm(batch_size, generator=self.generator)
        for chunk in order.tensor_split(steps):
            if len(chunk):
                yield chunk.tolist()

    # -- one PPO update --------------------------------------------------------------------------------

    def step(self, samples: Sequence[Sample], rewards: Sequence[float]) -> dict[str, float]:
        """Run one PPO update on a rollout batch and return its metrics.

        Args:
            samples: The rollout, as the engine returned it.
            rewards: One scalar reward per sample.

        Returns:
            Metrics: ``losses/policy_loss``, ``losses/value_loss``, ``losses/entropy``, ``charts/clipfrac``,
            ``charts/approx_kl``, ``charts/explained_variance``, ``charts/reward_mean``,
            ``charts/response_length``, and more ``charts/*``.
        """
        cfg = self.config
        batch = collate(samples, rewards, self.device)
        mask = batch.mask  # (B, R)
        all_rows = list(range(len(samples)))
        self.actor.train()
        self.critic.train()

        # 1. Score the rollout with the current weights: old logprobs and old values.
        old_logprobs = torch.zeros_like(mask)  # (B, R)
        old_values = torch.zeros_like(mask)  # (B, R)
        with torch.no_grad():
            for rows in self._micro_batches(batch, all_rows):
                old_logprobs[rows] = self._actor_forward(batch, rows)[0]
                old_values[rows] = self._critic_forward(batch, rows)

        # 2. Advantages: the reward on the last token, GAE, optional whitening; optional truncated IS.
        token_rewards = reward_at_last_token(batch.rewards, mask)  # (B, R)
        advantages, returns = compute_gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
        raw_advantages = advantages
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        tis_weights = None
        if cfg.tis_cap is not None:
            tis_weights = truncated_is_weights(old_logprobs, batch.rollout_logprobs, cfg.tis_cap)

        # 3. Actor update: per mini-batch, accumulate gradients over micro-batches, then one step.
        pg_losses, entropies, clipped_tokens, approx_kls, actor_grad_norms = [], [], 0.0, 0.0, []
        for _ in range(cfg.ppo_epochs):
            for mini_batch in self._mini_batches(len(samples), cfg.actor_steps):
                num_tokens = mask[mini_batch].sum()
                self.actor_optimizer.zero_grad(set_to_none=True)
                pg_loss_sum, entropy_sum = 0.0, 0.0
                for rows in self._micro_batches(batch, mini_batch):
                    logprobs, entropy = self._actor_forward(batch, rows)
                    mb_mask = mask[rows]
                    pg_loss = policy_loss(
                        logprobs,
                        old_logprobs[rows],
                        advantages[rows],
                        mb_mask,
                        clip_eps=cfg.clip_eps,
                        tis_weights=None if tis_weights is None else tis_weights[rows],
                        num_tokens=num_tokens,
                    )
                    entropy_loss = token_mean(entropy, mb_mask, num_tokens)
                    loss = pg_loss - cfg.entropy_coef * entropy_loss
                    loss.backward()  # type: ignore[no-untyped-call]

                    with torch.no_grad():
                        logratio = logprobs - old_logprobs[rows]
                        ratio = logratio.exp()
                        clipped_tokens += float(
                            ((ratio - 1.0).abs() > cfg.clip_eps).float().mul(mb_mask).sum()
                        )
                        approx_kls += float((((ratio - 1.0) - logratio) * mb_mask).sum())  # k3 estimator
                    pg_loss_sum += pg_loss.item()
                    entropy_sum += entropy_loss.item()
                grad_norm = nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)
                self.actor_optimizer.step()
                pg_losses.append(pg_loss_sum)
                entropies.append(entropy_sum)
                actor_grad_norms.append(float(grad_norm))

        # 4. Critic update(s): the same scheme against the GAE returns.
        v_losses, value_clipped_tokens, critic_grad_norms = [], 0.0, []
        for _ in range(cfg.ppo_epochs):
            for mini_batch in self._mini_batches(len(samples), cfg.critic_steps):
                num_tokens = mask[mini_batch].sum()
                self.critic_optimizer.zero_grad(set_to_none=True)
                v_loss_sum = 0.0
                for rows in self._micro_batches(batch, mini_batch):
                    values = self._critic_forward(batch, rows)
                    v_loss = value_loss(
                        values,
                        old_values[rows],
                        returns[rows],
                        mask[rows],
                        clip_eps=cfg.value_clip_eps,
                        num_tokens=num_tokens,
                    )
                    v_loss.backward()  # type: ignore[no-untyped-call]
                    if cfg.value_clip_eps is not None:
                        outside = (values - old_values[rows]).abs() > cfg.value_clip_eps
                        value_clipped_tokens += float((outside.float() * mask[rows]).sum())
                    v_loss_sum += v_loss.item()
                grad_norm = nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                self.critic_optimizer.step()
                v_losses.append(v_loss_sum)
                critic_grad_norms.append(float(grad_norm))

        # 5. Metrics.
        n_tokens = float(mask.sum())
        metrics = {
            "losses/policy_loss": _mean(pg_losses),
            "losses/value_loss": _mean(v_losses),
            "losses/entropy": _mean(entropies),
            "charts/clipfrac": clipped_tokens / (n_tokens * cfg.ppo_epochs),
            "charts/approx_kl": approx_kls / (n_tokens * cfg.ppo_epochs),
            "charts/value_clipfrac": value_clipped_tokens / (n_tokens * cfg.ppo_epochs),
            "charts/explained_variance": explained_variance(old_values, returns, mask),
            "charts/reward_mean": float(batch.rewards.mean()),
            "charts/reward_std": float(batch.rewards.std(unbiased=False)),
            "charts/response_length": float(mask.sum(dim=1).mean()),
            "charts/truncated_frac": float(batch.truncated.float().mean()),
            "charts/value_mean": float(masked_mean(old_values, mask)),
            "charts/advantage_mean": float(masked_mean(raw_advantages, mask)),
            "charts/return_mean": float(masked_mean(returns, mask)),
            "charts/rollout_logprob_diff": float(
                masked_mean((old_logprobs - batch.rollout_logprobs).abs(), mask)
            ),
            "charts/actor_grad_norm": _mean(actor_grad_norms),
            "charts/critic_grad_norm": _mean(critic_grad_norms),
            "charts/actor_lr": float(self.actor_optimizer.param_groups[0]["lr"]),
            "charts/critic_lr": float(self.critic_optimizer.param_groups[0]["lr"]),
        }
        if tis_weights is not None:
            metrics["charts/tis_weight_mean"] = float(masked_mean(tis_weights, mask))
        return metrics


def _adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; for a bf16 model `training.memory.BF16AdamW` (fp32 moments, Kahan-compensated updates)."""
    if next(model.parameters()).dtype == torch.bfloat16:
        from training.memory import BF16AdamW

        return BF16AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def _enable_checkpointing(model: Any) -> None:
    """Turn on activation (gradient) checkpointing of a transformers model, under either API name."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan
