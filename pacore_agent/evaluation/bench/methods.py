"""Method specifications of a benchmark run: ``pacore:high``, ``pacore:[32,4]``, ``single``, ``sc@16``, ``bon@8``.

A `MethodSpec` is parsed from its text once, has one canonical label (the method column of the store and
the report) and builds the strategy that runs it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pacore_agent.backends.base import Backend
from pacore_agent.coordinator import Coordinator
from pacore_agent.evaluation.datasets import Problem
from pacore_agent.evaluation.grading import MessageGrade
from pacore_agent.exceptions import UsageError
from pacore_agent.prompts import Messages
from pacore_agent.schedule import PRESETS, Schedule
from pacore_agent.strategies import (
    BestOfN,
    Scorer,
    SelfConsistency,
    Single,
    Strategy,
    code_scorer,
    reference_scorer,
)

__all__ = ["MethodKind", "MethodSpec", "parse_methods"]

MethodKind = Literal["pacore", "single", "sc", "bon"]

_FORMS = "pacore:low, pacore:medium, pacore:high, pacore:[32,4], single, sc@16, bon@8"
_PACORE = re.compile(r"pacore\s*[:\-]?\s*(?P<schedule>.+)")
_SAMPLED = re.compile(r"(?P<kind>sc|bon)\s*@\s*(?P<k>\d+)")


@dataclass(frozen=True)
class MethodSpec:
    """One method of a benchmark run.

    Attributes:
        kind: ``"pacore"``, ``"single"``, ``"sc"`` (self-consistency, majority vote) or ``"bon"``
            (best-of-n with the reference grader as scorer: an ORACLE upper bound, not a deployable method).
        schedule: PaCoRe's K vector (``kind == "pacore"`` only).
        k: Samples of a one-round method (1 for ``single``).
    """

    kind: MethodKind
    schedule: Schedule | None = None
    k: int = 1

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        """Parse ``pacore:low|medium|high``, ``pacore:[32,4]``, ``single``, ``sc@K`` or ``bon@N``.

        Raises:
            UsageError: Anything else; the message lists the accepted forms.
        """
        value = text.strip().lower()
        if value == "single":
            return cls("single")
        if sampled := _SAMPLED.fullmatch(value):
            k = int(sampled.group("k"))
            if k < 1:
                raise UsageError(f"method {text!r}: the number of samples must be at least 1")
            return cls("sc" if sampled.group("kind") == "sc" else "bon", k=k)
        if pacore := _PACORE.fullmatch(value):
            schedule = Schedule.parse(pacore.group("schedule"))
            preset = next((name for name, widths in PRESETS.items() if widths == schedule.widths), None)
            return cls("pacore", schedule=Schedule(schedule.widths, preset))
        raise UsageError(f"unknown method {text!r}: use one of {_FORMS}")

    @property
    def label(self) -> str:
        """The canonical name: ``pacore:low``, ``pacore:[32,4]``, ``single``, ``sc@16``, ``bon@8``."""
        if self.kind == "pacore":
            return f"pacore:{self.schedule}"
        return "single" if self.kind == "single" else f"{self.kind}@{self.k}"

    @property
    def first_width(self) -> int:
        """Trajectories of the first round (what a pool must hold at least)."""
        return self.schedule.widths[0] if self.schedule is not None else self.k

    @property
    def trajectories(self) -> int:
        """Trajectories one solve runs, every round included."""
        return sum(self.schedule.rounds) if self.schedule is not None else self.k

    def __str__(self) -> str:
        return self.label

    def strategy(
        self,
        backend: Backend,
        problem: Problem,
        *,
        known: Mapping[tuple[str, str | None], MessageGrade] | None = None,
        **options: Any,
    ) -> Coordinator | Single | SelfConsistency | BestOfN:
        """The strategy that runs this method on ``backend``.

        Args:
            backend: Where trajectories come from.
            problem: The benchmark problem (``bon`` scores with its reference answer or tests).
            known: Grades already given (a pool's), which ``bon``'s scorer reuses for the same text.
            **options: `Coordinator` options (``sampling``, ``seed``, ``budget``, ``order``, ...).
        """
        strategy: Coordinator | Single | SelfConsistency | BestOfN
        if self.kind == "pacore":
            assert self.schedule is not None
            strategy = Coordinator(self.schedule, backend, **options)
        elif self.kind == "single":
            strategy = Single(backend, **options)
        elif self.kind == "sc":
            strategy = SelfConsistency(self.k, backend, **options)
        else:
            scorer = (
                code_scorer([t.model_dump() for t in problem.tests])
                if problem.domain == "code"
                else reference_scorer(problem.answer)
            )
            strategy = BestOfN(self.k, _reusing(scorer, known) if known else scorer, backend, **options)
        assert isinstance(strategy, Strategy)
        return strategy


def parse_methods(texts: list[str] | tuple[str, ...]) -> tuple[MethodSpec, ...]:
    """Parse several methods (a comma-free list); duplicates (same canonical label) are an error."""
    specs = tuple(MethodSpec.parse(t) for t in texts)
    labels = [s.label for s in specs]
    if not specs:
        raise UsageError(f"give at least one method: {_FORMS}")
    if len(set(labels)) != len(labels):
        raise UsageError(f"a method is given twice: {', '.join(labels)}")
    return specs


def _reusing(scorer: Scorer, known: Mapping[tuple[str, str | None], MessageGrade]) -> Scorer:
    """``scorer``, answering from ``known`` grades (by text) where it can: the same choice, graded once."""
    by_text = {text: grade.score for (text, _), grade in known.items()}

    async def score(messages: Messages, conclusion: str) -> float:
        if conclusion in by_text:
            return by_text[conclusion]
        value = scorer(messages, conclusion)
        return float(await value) if inspect.isawaitable(value) else float(value)

    return score
