"""The synthesis environment: one training episode = a problem x, a message set M from its pool, P(x, M).

An episode of PaCoRe training (DESIGN.md, "Training"): take a problem and its pool of cached messages
(`training.pool`), draw |M| ~ U(lo, hi) of them (defaults 16 and 24) without replacement in a random
order, render P(x, M) with `pacore_agent.prompts.build_prompt` (the same function the `Coordinator`
calls, so the prompt is byte-identical to what inference sends for the same problem and ordered
messages), let the policy generate ONE trajectory, and score C(trajectory) against the problem: binary
for math (`pacore_agent.evaluation.answers.grade`), the pass rate of its tests for code.

The draw is a pure function of (seed, step, index): the same triple always gives the same episode,
whatever process or order it is drawn in.

Beside the reward, every episode reports flags the paper studies:

- ``all_messages_wrong``: messages were given and none was correct;
- ``emergent``: ... and yet the synthesis is right (`pacore_agent.evaluation.answers.emergent_correctness`);
- ``cross_check``: the response refers to the references ("the references", "Ref 3", "message 12", ...;
  the markers of ``pacore analyze``).

The environment deals in text and chat messages only, never in tensors: token ids are the rollout
engine's business. `apply_chat_template` renders P(x, M) with a tokenizer's chat template for engines
that take a prompt string or ids.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args

import anyio.to_thread

from pacore_agent.compactors import THINK_END, final_conclusion
from pacore_agent.evaluation.analyze import MARKER_PATTERNS, count_markers, marker_regex
from pacore_agent.evaluation.answers import DEFAULT_MATH_TIMEOUT, emergent_correctness, extract_answer
from pacore_agent.evaluation.grading import DEFAULT_TRUNCATION, Truncation, grade_message, problem_reference
from pacore_agent.evaluation.sandbox import SandboxConfig
from pacore_agent.evaluation.store import PoolEntry
from pacore_agent.exceptions import PacoreRuntimeError, UsageError
from pacore_agent.prompts import Messages, SynthesisTemplate, build_prompt
from training.data import TrainProblem
from training.pool import entry_problem

__all__ = [
    "CROSS_CHECK_PATTERN",
    "DEFAULT_HI",
    "DEFAULT_LO",
    "EnvConfig",
    "EnvDataError",
    "Episode",
    "RewardError",
    "RewardFn",
    "RewardResult",
    "SynthesisEnv",
    "apply_chat_template",
    "cross_check_mentions",
    "default_reward",
    "draw_messages",
    "episode_rng",
    "response_truncated",
    "score_response",
]

DEFAULT_LO = 16
"""Fewest messages per episode (|M| ~ U(16, 24) in the paper)."""

DEFAULT_HI = 24
"""Most messages per episode."""

CROSS_CHECK_PATTERN = marker_regex(MARKER_PATTERNS)
"""Words showing that a response cross-checks its references ("Reference 3", "message 2", "the references",
"other solutions", "cross-check", ...): `pacore_agent.evaluation.analyze.MARKER_PATTERNS`, the markers that
``pacore analyze`` counts in benchmark runs."""

RewardFn = Callable[[str, TrainProblem], float]
"""A reward: (C(trajectory), problem) -> score in [0, 1]."""


class EnvDataError(UsageError):
    """A problem or pool cannot make episodes (pool smaller than ``lo``, no answer, no tests).

    Attributes:
        problem_id: The problem at fault.
    """

    def __init__(self, message: str, *, problem_id: str) -> None:
        super().__init__(f"problem {problem_id!r}: {message}")
        self.problem_id = problem_id


class RewardError(PacoreRuntimeError):
    """The reward function raised, or returned something that is not a score in [0, 1].

    Attributes:
        problem_id: The problem being scored.
    """

    def __init__(self, message: str, *, problem_id: str) -> None:
        super().__init__(f"reward of problem {problem_id!r}: {message}")
        self.problem_id = problem_id


@dataclass(frozen=True)
class EnvConfig:
    """Settings of the synthesis environment.

    Attributes:
        lo: Fewest messages per episode.
        hi: Most messages per episode (|M| is uniform over the integers in [lo, hi]).
        seed: Seed of every draw (with the step and index of the episode).
        template: Override of the synthesis template (as `pacore_agent.prompts.build_prompt` takes it).
        compactor: C, applied to the generated trajectory before scoring (sync).
        sandbox: Sandbox limits for code rewards.
        math_timeout: Seconds math-verify may spend on one comparison.
        truncation: What a response that hit the length limit earns (`pacore_agent.evaluation.grading`):
            ``"zero"`` (default: reward 0, flagged), ``"mask"`` (flagged ``masked``: the trainer leaves
            it out of the loss) or ``"grade"`` (graded like any other, flagged).
    """

    lo: int = DEFAULT_LO
    hi: int = DEFAULT_HI
    seed: int = 0
    template: SynthesisTemplate | None = None
    compactor: Callable[[str], str] = final_conclusion
    sandbox: SandboxConfig | None = None
    math_timeout: float = DEFAULT_MATH_TIMEOUT
    truncation: Truncation = DEFAULT_TRUNCATION

    def __post_init__(self) -> None:
        if self.truncation not in get_args(Truncation):
            raise UsageError(f"truncation must be 'zero', 'mask' or 'grade', got {self.truncation!r}")
        if isinstance(self.lo, bool) or isinstance(self.hi, bool) or not 1 <= self.lo <= self.hi:
            raise UsageError(f"need 1 <= lo <= hi messages per episode, got lo={self.lo}, hi={self.hi}")


@dataclass(frozen=True)
class Episode:
    """One drawn episode: the problem, the messages given and the prompt P(x, M).

    Attributes:
        problem: The problem (answer or tests included).
        step: The step it was drawn for.
        index: Its index within the step.
        message_indices: Which pool messages were drawn, in reference order.
        references: Those messages' texts, in the same order (M).
        message_correct: Whether each of them was correct.
        prompt: P(x, M): the chat messages to send.
    """

    problem: TrainProblem
    step: int
    index: int
    message_indices: tuple[int, ...]
    references: tuple[str, ...]
    message_correct: tuple[bool, ...]
    prompt: Messages = field(repr=False)

    @property
    def problem_id(self) -> str:
        """The problem's id."""
        return self.problem.id

    @property
    def all_messages_wrong(self) -> bool:
        """Whether messages were given and none was correct."""
        return bool(self.message_correct) and not any(self.message_correct)


@dataclass(frozen=True)
class RewardResult:
    """The score of one generated trajectory and the episode's flags.

    Attributes:
        score: The reward: 1.0/0.0 for math, the pass rate for code.
        correct: ``score == 1``.
        predicted: The extracted answer (math), else None.
        conclusion: C(trajectory), as scored.
        all_messages_wrong: No message given was correct.
        emergent: All messages wrong and the synthesis right.
        cross_check: The response mentions its references.
        cross_check_mentions: How many times.
        truncated: The response hit the length limit.
        masked: Truncated under ``truncation="mask"``: leave it out of the loss.
    """

    score: float
    correct: bool
    predicted: str | None
    conclusion: str = field(repr=False)
    all_messages_wrong: bool
    emergent: bool
    cross_check: bool
    cross_check_mentions: int
    truncated: bool = False
    masked: bool = False

    def metrics(self) -> dict[str, float]:
        """Numeric fields, for logging (booleans as 0.0/1.0)."""
        return {
            "score": self.score,
            "acc": float(self.correct),
            "all_messages_wrong": float(self.all_messages_wrong),
            "emergent": float(self.emergent),
            "cross_check": float(self.cross_check),
            "cross_check_mentions": float(self.cross_check_mentions),
            "truncated": float(self.truncated),
            "masked": float(self.masked),
        }


# --------------------------------------------------------------------------------------------------
# Pure helpers


def episode_rng(seed: int, step: int, index: int) -> random.Random:
    """The random generator of episode ``index`` of ``step``: independent of time, process and order."""
    digest = hashlib.sha256(f"pacore-env|{seed}|{step}|{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw_messages(pool_size: int, lo: int, hi: int, rng: random.Random) -> list[int]:
    """Draw |M| ~ U(lo, hi) distinct message indices out of ``pool_size``, in a random order.

    ``hi`` is capped at ``pool_size`` (a pool that lost a few trajectories still serves).

    Raises:
        UsageError: ``pool_size < lo`` or a bad range.
    """
    if not 1 <= lo <= hi:
        raise UsageError(f"need 1 <= lo <= hi, got lo={lo}, hi={hi}")
    if pool_size < lo:
        raise UsageError(f"a pool of {pool_size} messages cannot give at least {lo}")
    size = rng.randint(lo, min(hi, pool_size))
    return rng.sample(range(pool_size), size)


def cross_check_mentions(response: str) -> int:
    """How many times a response refers to its references (see `CROSS_CHECK_PATTERN`)."""
    return count_markers(response)


def default_reward(
    conclusion: str,
    problem: TrainProblem,
    *,
    sandbox: SandboxConfig | None = None,
    math_timeout: float = DEFAULT_MATH_TIMEOUT,
) -> float:
    """The paper's reward of a conclusion: binary math grade, or the pass rate of the code tests.

    Args:
        conclusion: C(trajectory).
        problem: The problem (answer for math, tests for code).
        sandbox: Sandbox limits for code.
        math_timeout: Seconds math-verify may spend.

    Returns:
        A score in [0, 1] (`pacore_agent.evaluation.grading.grade_message`, the one message grader; a
        grade that could not happen, e.g. a math-verify timeout, scores 0).
    """
    return grade_message(
        conclusion, **problem_reference(problem), sandbox=sandbox, math_timeout=math_timeout
    ).score


def response_truncated(response: str, finish_reason: str | None) -> bool:
    """Whether a response hit the length limit.

    The engine's finish reason says so when known (``"length"``). When it is not (verl hands its reward
    function the text alone), a response that opened its reasoning and never closed it can only have
    been cut off: a reasoning model closes ``<think>`` before its conclusion.
    """
    if finish_reason is not None:
        return finish_reason == "length"
    return "<think>" in response and THINK_END not in response


class ChatTokenizer(Protocol):
    """What `apply_chat_template` needs: a Hugging Face tokenizer or processor fits."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        """Render (and optionally tokenize) a chat."""
        ...


def apply_chat_template(
    tokenizer: ChatTokenizer,
    prompt: Messages,
    *,
    tokenize: bool = False,
    add_generation_prompt: bool = True,
    **kwargs: Any,
) -> Any:
    """Render P(x, M) with a tokenizer's chat template, for rollout engines that take text or ids.

    Args:
        tokenizer: A Hugging Face tokenizer (anything with ``apply_chat_template``).
        prompt: The episode's chat messages (`Episode.prompt`).
        tokenize: Return token ids instead of text.
        add_generation_prompt: Open the assistant turn (what generation needs).
        **kwargs: Passed to the template (e.g. ``enable_thinking=True``).

    Returns:
        The prompt text, or its token ids (a list of ints) when ``tokenize``.
    """
    rendered = tokenizer.apply_chat_template(
        prompt, tokenize=tokenize, add_generation_prompt=add_generation_prompt, **kwargs
    )
    if not tokenize:
        return rendered
    if isinstance(rendered, Mapping):  # transformers may return a BatchEncoding
        rendered = rendered["input_ids"]
    ids = list(rendered)
    if ids and isinstance(ids[0], list | tuple):  # a batch of one
        ids = list(ids[0])
    return [int(i) for i in ids]


# --------------------------------------------------------------------------------------------------
# The environment


class SynthesisEnv:
    """Episodes of synthesis training over a set of pools.

    Example::

        env = SynthesisEnv(load_pool_entries("stage1.jsonl"))
        episode = env.episode(3, step=120, index=3)
        response = ...  # generate one trajectory from episode.prompt
        result = env.reward(episode, response)

    Args:
        pools: Pool entries (one per problem; see `training.pool`), each self-contained (answer, tests).
        config: Settings.
        reward_fn: Reward of a conclusion (default `default_reward`, with the config's sandbox and
            math timeout).

    Raises:
        EnvDataError: A pool has fewer messages than ``config.lo``, a math problem has no answer, a code
            problem has no tests, or a problem id repeats.
    """

    def __init__(
        self,
        pools: Iterable[PoolEntry],
        config: EnvConfig | None = None,
        *,
        reward_fn: RewardFn | None = None,
    ) -> None:
        self.config = config or EnvConfig()
        self.reward_fn: RewardFn = reward_fn or functools.partial(
            default_reward, sandbox=self.config.sandbox, math_timeout=self.config.math_timeout
        )
        self._entries: list[PoolEntry] = []
        self._problems: list[TrainProblem] = []
        self._by_id: dict[str, int] = {}
        for entry in pools:
            self._add(entry)

    def _add(self, entry: PoolEntry) -> None:
        problem_id = entry.problem_id
        if problem_id in self._by_id:
            raise EnvDataError("appears twice among the pools", problem_id=problem_id)
        lo = self.config.lo
        if len(entry.messages) < lo:
            raise EnvDataError(
                f"its pool has {len(entry.messages)} messages, fewer than lo={lo}: build a larger pool "
                f"(training.pool, PoolConfig.size) or lower EnvConfig.lo",
                problem_id=problem_id,
            )
        try:
            problem = entry_problem(entry)
        except UsageError as exc:
            raise EnvDataError(str(exc), problem_id=problem_id) from exc
        if problem.domain == "math" and not problem.answer.strip():
            raise EnvDataError("a math problem without an answer cannot be rewarded", problem_id=problem_id)
        if problem.domain == "code" and not problem.tests:
            raise EnvDataError(
                "a code problem without tests (metadata['tests']) cannot be rewarded", problem_id=problem_id
            )
        problem.messages  # noqa: B018 - a bad conversation fails here, not mid-training
        self._by_id[problem_id] = len(self._entries)
        self._entries.append(entry)
        self._problems.append(problem)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def problem_ids(self) -> list[str]:
        """Ids of the problems, in the order given."""
        return [e.problem_id for e in self._entries]

    def problem(self, which: int | str) -> TrainProblem:
        """A problem by position or id."""
        return self._problems[self._position(which)]

    def entry(self, which: int | str) -> PoolEntry:
        """A pool entry by position or id."""
        return self._entries[self._position(which)]

    def _position(self, which: int | str) -> int:
        if isinstance(which, str):
            if which not in self._by_id:
                raise UsageError(f"no problem {which!r} in this environment")
            return self._by_id[which]
        if not 0 <= which < len(self._entries):
            raise UsageError(f"problem position {which} is out of range [0, {len(self._entries)})")
        return which

    def episode(self, which: int | str, *, step: int, index: int) -> Episode:
        """Draw an episode of a problem: |M| ~ U(lo, hi) messages, seeded by (seed, step, index).

        Args:
            which: The problem, by position or id.
            step: The training step (or any counter that changes between draws).
            index: The episode's index within the step.

        Returns:
            The episode, with P(x, M) rendered.
        """
        position = self._position(which)
        entry, problem = self._entries[position], self._problems[position]
        rng = episode_rng(self.config.seed, step, index)
        indices = draw_messages(len(entry.messages), self.config.lo, self.config.hi, rng)
        references = tuple(entry.messages[i].message for i in indices)
        return Episode(
            problem=problem,
            step=step,
            index=index,
            message_indices=tuple(indices),
            references=references,
            message_correct=tuple(bool(entry.messages[i].correct) for i in indices),
            prompt=build_prompt(problem.messages, list(references), self.config.template),
        )

    def reward(self, episode: Episode, response: str, finish_reason: str | None = None) -> RewardResult:
        """Score a generated trajectory: reward = R(C(trajectory)), plus the episode's flags.

        Args:
            episode: The episode it was generated for.
            response: The whole generated trajectory (reasoning included, as the engine returned it).
            finish_reason: The engine's (``"length"``: it hit the limit; see `EnvConfig.truncation`).

        Raises:
            RewardError: The reward function raised (chained) or returned a non-score.
        """
        return score_response(
            episode.problem,
            response,
            episode.message_correct,
            reward_fn=self.reward_fn,
            compactor=self.config.compactor,
            finish_reason=finish_reason,
            truncation=self.config.truncation,
        )

    async def areward(
        self, episode: Episode, response: str, finish_reason: str | None = None
    ) -> RewardResult:
        """`reward` in a worker thread, for async callers (grading may run a sandbox)."""
        return await anyio.to_thread.run_sync(
            self.reward, episode, response, finish_reason, abandon_on_cancel=True
        )


def score_response(
    problem: TrainProblem,
    response: str,
    message_correct: Sequence[bool],
    *,
    reward_fn: RewardFn,
    compactor: Callable[[str], str] = final_conclusion,
    finish_reason: str | None = None,
    truncation: Truncation = DEFAULT_TRUNCATION,
) -> RewardResult:
    """Score one trajectory of an episode (the work of `SynthesisEnv.reward`, usable without an env).

    A truncated response (`response_truncated`) earns what ``truncation`` says, by the one grader's rule
    (`pacore_agent.evaluation.grading.grade_message`): 0 and flagged (``zero``), 0 and ``masked``
    (``mask``), or ``reward_fn``'s score, flagged (``grade``).

    Args:
        problem: The problem.
        response: The whole generated trajectory.
        message_correct: Correctness of the messages the episode gave.
        reward_fn: The reward of a conclusion.
        compactor: C.
        finish_reason: The engine's finish reason (None: unknown, inferred from the text).
        truncation: What a truncated response earns.

    Raises:
        RewardError: The reward function raised (chained) or returned a non-score.
    """
    conclusion = compactor(response or "")
    truncated = response_truncated(response or "", finish_reason)
    masked = False
    try:
        if truncated and truncation != "grade":
            # decided by the grader's truncation rule before any grading (no sandbox, no math-verify)
            decided = grade_message(
                response, **problem_reference(problem), finish_reason="length", truncation=truncation
            )
            score, masked = decided.score, decided.masked
        else:
            score = reward_fn(conclusion, problem)
    except Exception as exc:
        raise RewardError(
            f"the reward function raised {type(exc).__name__}: {exc}", problem_id=problem.id
        ) from exc
    if isinstance(score, bool):
        score = float(score)
    if not isinstance(score, int | float) or not 0.0 <= float(score) <= 1.0:
        raise RewardError(
            f"the reward function returned {score!r}, not a score in [0, 1]", problem_id=problem.id
        )
    score = float(score)
    correct = score >= 1.0
    mentions = cross_check_mentions(response or "")
    return RewardResult(
        score=score,
        correct=correct,
        predicted=extract_answer(conclusion) if problem.domain == "math" else None,
        conclusion=conclusion,
        all_messages_wrong=bool(message_correct) and not any(message_correct),
        emergent=emergent_correctness(list(message_correct), correct),
        cross_check=mentions > 0,
        cross_check_mentions=mentions,
        truncated=truncated,
        masked=masked,
    )
