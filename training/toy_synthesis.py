"""A toy of synthesis, not voting: the majority of the messages is wrong, and the answer is still recoverable.

`training.toy` rewards following the majority of the references, since they are right more often than
not; a policy trained there learns majority voting (given four identical wrong references it repeats
them), the shortcut PaCoRe's stage-1 curriculum exists to prevent. Here episodes are built the way
stage 1 selects them:

- the problem is two digits a and b (b <= ``b_max``, 1 by default), the answer (a + b) mod 10, so a
  right answer can always be derived from the problem itself;
- four messages, each a digit and a mark; in most episodes (``misleading``, 70%) three of them agree on
  the same wrong answer and one is right, and that one carries the CHECK mark (it verified its work) 30%
  of the time; some episodes (``all_wrong``, 20%) have no right message at all; a few (``easy``, 10%)
  have a right majority.

Majority voting then scores about 0.1, copying a random message about 0.25, and the oracle 1.0. A policy
can only beat the majority by using what the others lack: the check, and the problem itself. The held-out
all-wrong episodes measure emergent correctness (right although every message is wrong): a voter or a
copier scores 0 there.

Prompt layout (token ids)::

    <bos> a + b | d1 k1 d2 k2 d3 k3 d4 k4 =      ->  response: one digit

where each ``k`` is CHECK or SEP. Training follows the paper: strict on-policy PPO, one actor and one
critic step per batch, no KL and no entropy terms.
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from training.ppo import PPOConfig, PPOTrainer
from training.rollout import HFRollout
from training.toy import (
    BOS,
    EOS,
    EQUALS,
    PAD,
    PLUS,
    REFS,
    TinyPolicySettings,
    evaluate,
    make_policy,
    ppo_steps,
    toy_ppo,
)

__all__ = [
    "CHECK",
    "SEP",
    "VOCAB_SIZE",
    "Episode",
    "Settings",
    "SynthesisRun",
    "baselines",
    "make_episodes",
    "train",
]

CHECK, SEP = 16, 17
"""A message's mark: CHECK (it verified its answer) or SEP (no check)."""

VOCAB_SIZE = 18
"""The toy's vocabulary (`training.toy`'s 16 tokens and the two marks)."""

Kind = str
"""``misleading``, ``all_wrong`` or ``easy``."""


@dataclass(frozen=True, slots=True)
class Episode:
    """One synthesis episode: the problem and its messages (digit, checked)."""

    a: int
    b: int
    messages: tuple[tuple[int, bool], ...]
    kind: Kind

    @property
    def answer(self) -> int:
        """(a + b) mod 10."""
        return (self.a + self.b) % 10

    @property
    def prompt_ids(self) -> list[int]:
        """``<bos> a + b | d1 k1 ... d4 k4 =``."""
        body = [t for digit, checked in self.messages for t in (digit, CHECK if checked else SEP)]
        return [BOS, self.a, PLUS, self.b, REFS, *body, EQUALS]


def _wrong(answer: int, rng: random.Random, avoid: Sequence[int] = ()) -> int:
    return rng.choice([d for d in range(10) if d != answer and d not in avoid])


def make_episodes(
    n: int,
    rng: random.Random,
    *,
    mix: tuple[float, float, float] = (0.75, 0.1, 0.15),
    check_rate: float = 0.5,
    b_max: int = 9,
) -> list[Episode]:
    """Draw ``n`` episodes; ``mix`` is the share of (misleading, all_wrong, easy) episodes, b <= ``b_max``.

    - misleading: three messages share one wrong answer, one is right and checked with ``check_rate``;
    - all_wrong: three share one wrong answer, the fourth is another wrong answer, none checked;
    - easy: three are right (none checked), one is wrong.
    """
    episodes = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(b_max + 1)
        answer = (a + b) % 10
        wrong = _wrong(answer, rng)
        draw = rng.random()
        if draw < mix[0]:
            kind, messages = "misleading", [(wrong, False)] * 3 + [(answer, rng.random() < check_rate)]
        elif draw < mix[0] + mix[1]:
            kind, messages = "all_wrong", [(wrong, False)] * 3 + [(_wrong(answer, rng, [wrong]), False)]
        else:
            kind, messages = "easy", [(answer, False)] * 3 + [(wrong, False)]
        rng.shuffle(messages)
        episodes.append(Episode(a, b, tuple(messages), kind))
    return episodes


def all_wrong_episodes(n: int, rng: random.Random, *, b_max: int = 9) -> list[Episode]:
    """``n`` episodes in which every message is wrong (held out: emergent correctness)."""
    return make_episodes(n, rng, mix=(0.0, 1.0, 0.0), b_max=b_max)


def baselines(episodes: Sequence[Episode]) -> dict[str, float]:
    """Expected reward of majority voting (ties split evenly), copying a random message, and the oracle."""
    majority = copy = 0.0
    for episode in episodes:
        counts = Counter(digit for digit, _ in episode.messages)
        top = max(counts.values())
        winners = [d for d, c in counts.items() if c == top]
        majority += (episode.answer in winners) / len(winners)
        copy += sum(d == episode.answer for d, _ in episode.messages) / len(episode.messages)
    return {"majority": majority / len(episodes), "random_copy": copy / len(episodes), "oracle": 1.0}


@dataclass(frozen=True, slots=True)
class Settings(TinyPolicySettings):
    """Everything a run depends on."""

    steps: int = 500
    """PPO updates (one actor and one critic step each)."""
    b_max: int = 1
    """The problem's second digit is drawn from 0..b_max: the answer is a or a + 1 (mod 10), a step the
    policy must take itself where every message is wrong."""
    mix: tuple[float, float, float] = (0.7, 0.2, 0.1)
    """Shares of misleading, all-wrong and easy episodes in training and in the evaluation set."""
    check_rate: float = 0.3
    """How often the right message of a misleading episode carries the CHECK mark."""
    seed: int = 0
    """Seeds the model, the episodes and the sampling."""
    eval_episodes: int = 512
    """Episodes of each fixed evaluation set (one sample each, temperature 1)."""
    ppo: PPOConfig = field(
        default_factory=lambda: toy_ppo(
            actor_lr=1.5e-3, actor_steps=1, critic_steps=1, ppo_epochs=1, entropy_coef=0.0
        )
    )
    """The paper's PPO shape (one update per batch, strictly on-policy, no KL, no entropy bonus) with a
    toy-sized learning rate and batch. An actor lr of 3e-3 learns faster at first and then stalls around
    0.6-0.75 (it settles on copying the checked message); 1.5e-3 goes on to about 0.9."""


@dataclass(frozen=True, slots=True)
class SynthesisRun:
    """What a run measured (rewards are means over the fixed evaluation sets).

    Attributes:
        start_reward: Before training, on episodes of the training mix.
        final_reward: After training, on the same episodes.
        start_all_wrong: Before training, on held-out episodes where every message is wrong.
        all_wrong_reward: After training, on those.
        baselines: Majority vote, random copy and oracle on the training-mix evaluation set.
        history: The trainer's metrics of every step.
        seconds: Wall time.
    """

    start_reward: float
    final_reward: float
    start_all_wrong: float
    all_wrong_reward: float
    baselines: dict[str, float]
    history: list[dict[str, float]]
    seconds: float


def train(settings: Settings, on_step: Callable[[int, dict[str, float]], None] | None = None) -> SynthesisRun:
    """Train a tiny policy with PPO on the toy and evaluate it before and after.

    Args:
        settings: The run's settings.
        on_step: Called with (step, metrics) after every update.
    """
    started = time.perf_counter()
    rng = random.Random(settings.seed)
    ppo = settings.ppo
    policy = make_policy(
        settings.seed, hidden_size=settings.hidden_size, num_layers=settings.num_layers, vocab_size=VOCAB_SIZE
    )
    trainer = PPOTrainer(policy, config=ppo)
    engine = HFRollout(policy, pad_token_id=PAD, eos_token_id=EOS, temperature=ppo.temperature)
    held_out = random.Random(settings.seed + 1_000_003)  # the same evaluation sets before and after
    draw = functools.partial(
        make_episodes, mix=settings.mix, check_rate=settings.check_rate, b_max=settings.b_max
    )
    evaluation = draw(settings.eval_episodes, held_out)
    all_wrong = all_wrong_episodes(settings.eval_episodes, held_out, b_max=settings.b_max)

    start_reward, start_all_wrong = evaluate(engine, evaluation), evaluate(engine, all_wrong)
    history = ppo_steps(trainer, engine, lambda count: draw(count, rng), settings, on_step)
    return SynthesisRun(
        start_reward=start_reward,
        final_reward=evaluate(engine, evaluation),
        start_all_wrong=start_all_wrong,
        all_wrong_reward=evaluate(engine, all_wrong),
        baselines=baselines(evaluation),
        history=history,
        seconds=time.perf_counter() - started,
    )
