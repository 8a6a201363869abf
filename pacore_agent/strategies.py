"""Strategies: PaCoRe and the baselines it must beat, run the same way on the same backends.

Every strategy has ``async solve(problem) -> SolveResult`` (the same result type, so reports treat
every method alike) and ``solve_many``. They all run their trajectories through
`Coordinator.run_round`, so limits, retries, budgets and traces are identical:

- `PaCoRe`: the `Coordinator` itself.
- `Single`: one call.
- `SelfConsistency`: k samples, majority vote over equivalent answers (math-verify).
- `BestOfN`: n samples, the best by a pluggable scorer (a reference grader, a verifier, an LLM judge).

Sequential refinement needs no class: ``Coordinator(schedule=[1, 1, 1])``.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from pacore_agent.backends.base import Backend, GenerationRequest, SamplingParams
from pacore_agent.budget import Budget
from pacore_agent.compactors import final_conclusion
from pacore_agent.coordinator import Coordinator, Problem, collect, solve_each
from pacore_agent.evaluation.answers import avote, extract_answer
from pacore_agent.exceptions import RoundFailedError, SolveError, UsageError
from pacore_agent.prompts import Messages, message_text, normalize_problem
from pacore_agent.results import RoundResult, SolveResult, Trajectory

__all__ = [
    "BestOfN",
    "PaCoRe",
    "Scorer",
    "SelfConsistency",
    "Single",
    "Strategy",
    "code_scorer",
    "llm_judge",
    "reference_scorer",
]

PaCoRe = Coordinator
"""PaCoRe is the `Coordinator`: rounds of parallel trajectories, compacted and synthesized."""

Scorer = Callable[[Messages, str], float] | Callable[[Messages, str], Awaitable[float]]
"""Scores a conclusion for a problem (higher is better)."""


@runtime_checkable
class Strategy(Protocol):
    """What every method offers: a label and ``solve`` returning a `SolveResult`."""

    @property
    def method(self) -> str:
        """A label for traces and reports (``"pacore-low"``, ``"sc@16"``, ...)."""
        ...

    async def solve(self, problem: Problem) -> SolveResult:
        """Solve one problem."""
        ...


class _Sampling:
    """Shared machinery of the one-round strategies: one round of ``width`` trajectories, then a choice."""

    width: int

    def __init__(
        self,
        backend: Backend | None,
        *,
        sampling: SamplingParams | None = None,
        budget: Budget | None = None,
        clock: Callable[[], float] = time.perf_counter,
        **options: Any,
    ) -> None:
        # A schedule of [width] only sizes the safety cap; the strategy runs exactly one round.
        self._coordinator = Coordinator(
            [self.width], backend, sampling=sampling, budget=budget, clock=clock, **options
        )

    @property
    def method(self) -> str:
        """A label for traces and reports."""
        raise NotImplementedError

    @property
    def backend(self) -> Backend:
        """The backend trajectories come from."""
        return self._coordinator.backend

    async def solve(self, problem: Problem, *, first_round: RoundResult | None = None) -> SolveResult:
        """Solve one problem (see the class docstring for how the answer is chosen).

        Args:
            problem: The problem text or chat messages.
            first_round: Trajectories run elsewhere (a pool's draw) to choose from instead of running
                the round; taken through `Coordinator.adopt_round` (budget, compactor, order apply).
        """
        messages = normalize_problem(problem)
        coordinator = self._coordinator
        started, start = time.time(), coordinator.clock()
        if first_round is None:
            round_ = await coordinator.run_round(messages, self.width)
        else:
            if first_round.width != self.width:
                raise UsageError(
                    f"first_round has width {first_round.width}; {self.method} needs {self.width}"
                )
            round_ = await coordinator.adopt_round(messages, first_round)
            start -= first_round.wall_s  # its own time counts
        result = SolveResult(
            method=self.method,
            problem=messages,
            rounds=[round_],
            schedule=[self.width],
            order_policy=coordinator.order if isinstance(coordinator.order, str) else "custom",
            seed=coordinator.seed,
            started_at=started,
        )
        finished = [t for t in round_.trajectories if t.ok]
        if not finished:
            result.wall_s = coordinator.clock() - start
            raise RoundFailedError(f"every trajectory of {self.method} failed", partial=result)
        chosen = await self._choose(messages, finished, result)
        result.final = chosen
        result.answer = final_conclusion(chosen.text)
        result.wall_s = coordinator.clock() - start
        return result

    async def solve_many(
        self, problems: Sequence[Problem], *, max_in_flight: int | None = None
    ) -> list[SolveResult | SolveError]:
        """Solve many problems concurrently; a failed problem gets its `SolveError` in its slot."""
        return await collect(self.solve_iter(problems, max_in_flight=max_in_flight), len(problems))

    async def solve_iter(
        self, problems: Sequence[Problem], *, max_in_flight: int | None = None
    ) -> AsyncIterator[tuple[int, SolveResult | SolveError]]:
        """Like `solve_many`, yielding ``(index, result)`` as each problem finishes."""
        conversations = [normalize_problem(p) for p in problems]
        async for item in solve_each(self.solve, conversations, max_in_flight):
            yield item

    async def aclose(self) -> None:
        """Close the backend if it was built from the environment."""
        await self._coordinator.aclose()

    async def _choose(
        self, messages: Messages, finished: list[Trajectory], result: SolveResult
    ) -> Trajectory:
        raise NotImplementedError


class Single(_Sampling):
    """One call: the model answers once. ``answer`` is its conclusion.

    Args:
        backend: Where the call goes (default: from the environment, as `Coordinator`).
        sampling: Sampling settings.
        budget: Limits of each solve.
        clock: Monotonic clock.
        **options: Other `Coordinator` options (``retry``, ``compactor``, ...).
    """

    width = 1

    @property
    def method(self) -> str:
        """``"single"``."""
        return "single"

    async def _choose(
        self, messages: Messages, finished: list[Trajectory], result: SolveResult
    ) -> Trajectory:
        return finished[0]


class SelfConsistency(_Sampling):
    """k samples and a majority vote over equivalent answers.

    Answers are extracted from each conclusion and grouped with math-verify equivalence; the winning
    class is the largest (ties: the class whose first member comes first in launch order). ``final``
    is the first trajectory of the winning class and ``answer`` its conclusion. The vote is recorded in
    ``info["votes"]`` (one entry per class, ``answer`` ``None`` for trajectories without one) and
    ``info["voted_answer"]``.

    Args:
        k: Samples per problem.
        backend: Where the calls go.
        **options: As `Single`.
    """

    def __init__(self, k: int, backend: Backend | None = None, **options: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UsageError(f"self-consistency needs k >= 1 samples, got {k!r}")
        self.width = k
        super().__init__(backend, **options)

    @property
    def method(self) -> str:
        """``"sc@k"``."""
        return f"sc@{self.width}"

    async def _choose(
        self, messages: Messages, finished: list[Trajectory], result: SolveResult
    ) -> Trajectory:
        answers = [extract_answer(final_conclusion(t.text)) for t in finished]
        votes = await avote(answers)
        assert votes.winner is not None  # finished is not empty
        result.info["votes"] = [
            {
                "answer": cls.representative,
                "count": cls.count,
                "trajectories": [finished[i].index for i in cls.members],
            }
            for cls in votes.classes
        ]
        result.info["voted_answer"] = votes.answer
        return finished[votes.winner.members[0]]


class BestOfN(_Sampling):
    """n samples; the best by a scorer.

    Ties go to the earliest trajectory. Scores are recorded in ``info["scores"]`` (by trajectory index).

    Args:
        n: Samples per problem.
        scorer: ``(problem messages, conclusion) -> score``, sync or async: `reference_scorer`,
            `code_scorer`, `llm_judge`, or any verifier.
        backend: Where the calls go.
        **options: As `Single`.
    """

    def __init__(self, n: int, scorer: Scorer, backend: Backend | None = None, **options: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"best-of-n needs n >= 1 samples, got {n!r}")
        if not callable(scorer):
            raise UsageError(
                "best-of-n needs a scorer: reference_scorer(answer), code_scorer(tests), llm_judge(...)"
            )
        self.width = n
        self.scorer = scorer
        super().__init__(backend, **options)

    @property
    def method(self) -> str:
        """``"bon@n"``."""
        return f"bon@{self.width}"

    async def _choose(
        self, messages: Messages, finished: list[Trajectory], result: SolveResult
    ) -> Trajectory:
        scores: list[float] = []
        for trajectory in finished:
            score = self.scorer(messages, final_conclusion(trajectory.text))
            if inspect.isawaitable(score):
                score = await score
            scores.append(float(score))
        result.info["scores"] = {str(t.index): s for t, s in zip(finished, scores, strict=True)}
        best = max(range(len(finished)), key=lambda i: (scores[i], -i))
        return finished[best]


def reference_scorer(reference: str) -> Scorer:
    """1.0 when the conclusion's answer matches ``reference`` (math-verify), else 0.0."""

    async def score(messages: Messages, conclusion: str) -> float:
        from pacore_agent.evaluation.grading import agrade_message

        return (await agrade_message(conclusion, answer=reference)).score

    return score


def code_scorer(tests: Sequence[dict[str, Any]]) -> Scorer:
    """The pass rate of the conclusion's program on stdin/stdout ``tests`` (sandboxed)."""

    async def score(messages: Messages, conclusion: str) -> float:
        from pacore_agent.evaluation.grading import agrade_message

        return (await agrade_message(conclusion, tests=tests)).score

    return score


JUDGE_PROMPT = (
    "You are grading a solution to a problem. Reply with a single line 'Score: N' where N is an integer "
    "from 0 (wrong) to 10 (certainly correct).\n\nProblem:\n{problem}\n\nSolution:\n{solution}"
)


def llm_judge(
    backend: Backend, *, prompt: str = JUDGE_PROMPT, sampling: SamplingParams | None = None
) -> Scorer:
    """A scorer asking a judge model to rate the conclusion from 0 to 10 (unparseable replies score -1).

    Args:
        backend: The judge.
        prompt: Template with ``{problem}`` and ``{solution}``.
        sampling: The judge's sampling settings (default: temperature 0).
    """
    settings = sampling or SamplingParams(temperature=0.0, top_p=1.0)

    async def score(messages: Messages, conclusion: str) -> float:
        problem = message_text(next(m for m in reversed(messages) if m.get("role") == "user"))
        request = GenerationRequest(
            messages=[{"role": "user", "content": prompt.format(problem=problem, solution=conclusion)}],
            sampling=settings,
        )
        async with backend.limiter:
            reply = (await backend.generate(request))[0]
        match = re.search(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", final_conclusion(reply.content or ""), re.I)
        return float(match.group(1)) if match else -1.0

    return score
