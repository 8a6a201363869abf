"""A toy synthesis task small enough to train with PPO on a CPU in seconds.

A problem is two digits a and b; the answer is (a + b) mod 10. Like a PaCoRe synthesis prompt, the
prompt also shows a handful of "reference answers" from earlier attempts, each correct with probability
``reference_accuracy`` and otherwise a random digit. The policy, a tiny randomly initialised Llama with
a 16-token vocabulary, answers with ONE token and earns reward 1 when that token is the right digit.
It starts near chance (about 1/16) and can learn to follow the majority of the references and/or to
compute the sum.

Prompt layout (token ids)::

    <bos> a + b | r1 r2 r3 r4 =        ->  response: one digit
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.ppo import PPOConfig, PPOTrainer
from training.rollout import HFRollout, Sample

__all__ = [
    "BOS",
    "EOS",
    "EQUALS",
    "PAD",
    "PLUS",
    "REFS",
    "VOCAB_SIZE",
    "TinyPolicySettings",
    "ToyProblem",
    "ToyRun",
    "ToySettings",
    "evaluate",
    "make_policy",
    "ppo_steps",
    "reward",
    "sample_problems",
    "toy_ppo",
    "train",
]

# The vocabulary: ids 0-9 are the digits themselves, then a few markers.
PLUS, REFS, EQUALS, BOS, EOS, PAD = 10, 11, 12, 13, 14, 15
VOCAB_SIZE = 16


@dataclass(frozen=True, slots=True)
class ToyProblem:
    """One problem: two digits and the reference answers shown with them."""

    a: int
    b: int
    references: tuple[int, ...]

    @property
    def answer(self) -> int:
        """The right answer, (a + b) mod 10."""
        return (self.a + self.b) % 10

    @property
    def prompt_ids(self) -> list[int]:
        """The prompt as token ids: ``<bos> a + b | refs... =``."""
        return [BOS, self.a, PLUS, self.b, REFS, *self.references, EQUALS]


def sample_problems(
    n: int, rng: random.Random, *, n_references: int = 4, reference_accuracy: float = 0.6
) -> list[ToyProblem]:
    """Draw ``n`` problems; each reference is right with probability ``reference_accuracy``."""
    problems = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        refs = tuple(
            (a + b) % 10 if rng.random() < reference_accuracy else rng.randrange(10)
            for _ in range(n_references)
        )
        problems.append(ToyProblem(a, b, refs))
    return problems


class _Answered(Protocol):
    """A toy episode (`ToyProblem`, the synthesis toy's `Episode`): a prompt and its one-token answer."""

    @property
    def prompt_ids(self) -> list[int]: ...

    @property
    def answer(self) -> int: ...


def reward(problem: _Answered, sample: Sample) -> float:
    """1.0 when the response's first token is the right digit, else 0.0."""
    return 1.0 if sample.response_ids[:1] == [problem.answer] else 0.0


def make_policy(
    seed: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 1,
    num_heads: int = 4,
    init_std: float = 0.1,
    vocab_size: int = VOCAB_SIZE,
) -> LlamaForCausalLM:
    """A tiny randomly initialised Llama over the toy vocabulary (built from a config, no download).

    ``init_std`` is larger than transformers' default of 0.02: on the toy task the policy then passes a
    reward of 0.7 in about half the PPO steps. A toy with more tokens passes its ``vocab_size``.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=32,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    return LlamaForCausalLM(config)


def toy_ppo(**changes: Any) -> PPOConfig:
    """PPO settings of a toy task: toy-sized learning rates and batches of 32 problems x 8 responses.

    Args:
        **changes: `PPOConfig` fields that differ from those (a task's own shape of update).
    """
    return PPOConfig(
        **{
            "actor_lr": 1e-3,
            "critic_lr": 3e-3,
            "problems_per_step": 32,
            "responses_per_problem": 8,
            **changes,
        }
    )


@dataclass(frozen=True, slots=True)
class TinyPolicySettings:
    """The tiny policy and its learning-rate schedule: what the settings of every toy task share."""

    hidden_size: int = 64
    """Width of the tiny policy (and critic)."""
    num_layers: int = 1
    """Transformer layers of the tiny policy (and critic)."""
    anneal_lr: bool = True
    """Decay both learning rates linearly to 0 over the run (as cleanrl does); it steadies the end of a
    run, where a constant rate keeps the reward swinging by +-0.1."""


@dataclass(frozen=True, slots=True)
class ToySettings(TinyPolicySettings):
    """Everything a toy run depends on."""

    steps: int = 50
    """PPO updates."""
    seed: int = 0
    """Seeds the model, the problems and the sampling."""
    n_references: int = 4
    """Reference answers shown in each prompt."""
    reference_accuracy: float = 0.6
    """Probability that a reference answer is right."""
    eval_problems: int = 512
    """Problems in the fixed evaluation set (one sample each, temperature 1)."""
    ppo: PPOConfig = field(default_factory=lambda: toy_ppo(actor_steps=4, critic_steps=4))
    """PPO settings. The toy takes far larger learning rates than the paper's, and four actor and critic
    steps per batch of 32 problems x 8 responses; with fewer responses per problem some seeds settle on
    copying one reference (reward ~0.64) instead of following their majority (~0.86)."""


@dataclass(frozen=True, slots=True)
class ToyRun:
    """What a toy run measured.

    Attributes:
        start_reward: Mean evaluation reward before training.
        final_reward: Mean evaluation reward after training.
        history: The trainer's metrics of every step (``charts/reward_mean`` is the rollout's reward).
        seconds: Wall time of the run.
    """

    start_reward: float
    final_reward: float
    history: list[dict[str, float]]
    seconds: float


@torch.no_grad()
def evaluate(engine: HFRollout, problems: Sequence[_Answered]) -> float:
    """Mean reward of one sampled answer per problem."""
    samples = engine.generate([p.prompt_ids for p in problems], n=1, max_new_tokens=1)
    return sum(reward(p, s) for p, s in zip(problems, samples, strict=True)) / len(problems)


class _Schedule(Protocol):
    @property
    def steps(self) -> int: ...

    @property
    def anneal_lr(self) -> bool: ...


def ppo_steps(
    trainer: PPOTrainer,
    engine: HFRollout,
    draw: Callable[[int], Sequence[_Answered]],
    schedule: _Schedule,
    on_step: Callable[[int, dict[str, float]], None] | None,
) -> list[dict[str, float]]:
    """The PPO loop of a toy task: one-token answers to ``draw``-n problems, each earning its `reward`.

    Args:
        trainer: The trainer; its config gives the batch shape and the learning rates.
        engine: The rollout engine over the trainer's actor; it gets the weights after every update.
        draw: Returns that many fresh training problems.
        schedule: The task's settings: ``steps`` PPO updates, with both learning rates decayed linearly
            to 0 over them when ``anneal_lr``.
        on_step: Called with (step, metrics) after every update.

    Returns:
        The trainer's metrics of every step.
    """
    ppo = trainer.config
    history = []
    steps = schedule.steps
    for step in range(steps):
        if schedule.anneal_lr:
            frac = 1.0 - step / steps
            for group in trainer.actor_optimizer.param_groups:
                group["lr"] = frac * ppo.actor_lr
            for group in trainer.critic_optimizer.param_groups:
                group["lr"] = frac * ppo.critic_lr
        problems = draw(ppo.problems_per_step)
        samples = engine.generate(
            [p.prompt_ids for p in problems], n=ppo.responses_per_problem, max_new_tokens=1
        )
        rewards = [reward(problems[i // ppo.responses_per_problem], s) for i, s in enumerate(samples)]
        metrics = trainer.step(samples, rewards)
        engine.sync_weights(trainer.actor)
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
    return history


def train(settings: ToySettings, on_step: Callable[[int, dict[str, float]], None] | None = None) -> ToyRun:
    """Train a tiny policy on the toy task with PPO and `HFRollout`; evaluate before and after.

    Args:
        settings: The run's settings.
        on_step: Called with (step, metrics) after every update, e.g. to print a reward curve.

    Returns:
        The start and final evaluation rewards, per-step metrics and wall time.
    """
    started = time.perf_counter()
    rng = random.Random(settings.seed)
    ppo = settings.ppo
    policy = make_policy(settings.seed, hidden_size=settings.hidden_size, num_layers=settings.num_layers)
    trainer = PPOTrainer(policy, config=ppo)
    engine = HFRollout(policy, pad_token_id=PAD, eos_token_id=EOS, temperature=ppo.temperature)

    draw = functools.partial(
        sample_problems,
        n_references=settings.n_references,
        reference_accuracy=settings.reference_accuracy,
    )

    def eval_problems() -> list[ToyProblem]:
        # the same evaluation set before and after
        return draw(settings.eval_problems, random.Random(settings.seed + 1_000_003))

    start_reward = evaluate(engine, eval_problems())
    history = ppo_steps(trainer, engine, lambda count: draw(count, rng), settings, on_step)
    final_reward = evaluate(engine, eval_problems())
    return ToyRun(start_reward, final_reward, history, time.perf_counter() - started)
