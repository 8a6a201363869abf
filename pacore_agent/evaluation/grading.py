"""Grading a whole `SolveResult`: the final answer, every round's messages, and emergent correctness.

Emergent correctness (the PaCoRe report's measure of real synthesis): the answer is right although every
message the final round was given was wrong. Benchmarks report its rate; training uses the same flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from pacore_agent.compactors import final_conclusion
from pacore_agent.evaluation.answers import agrade, emergent_correctness, extract_answer
from pacore_agent.results import SolveResult

__all__ = ["Grading", "RoundGrading", "grade_result", "score_text"]


class RoundGrading(BaseModel):
    """Correctness of one round's messages (in reference order)."""

    index: int
    correct: list[bool] = Field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        """Share of right messages, ``None`` for a round without messages."""
        return sum(self.correct) / len(self.correct) if self.correct else None


class Grading(BaseModel):
    """How a result scored against the reference.

    Attributes:
        predicted: The extracted final answer (math) or ``None`` (code).
        score: 1.0/0.0 for math; the pass rate for code.
        correct: ``score == 1``.
        rounds: Message correctness of every round before the final one (when graded).
        emergent: Every message given to the final round was wrong, and the answer is right.
    """

    predicted: str | None = None
    score: float = 0.0
    correct: bool = False
    rounds: list[RoundGrading] = Field(default_factory=list)
    emergent: bool = False


async def score_text(
    text: str | None, *, answer: str | None, tests: Sequence[Mapping[str, Any]] | None
) -> float:
    """1.0/0.0 against a reference answer, or the pass rate on code ``tests``."""
    if tests:
        from pacore_agent.evaluation.sandbox import arun_code_tests, extract_program

        return (await arun_code_tests(extract_program(text or ""), list(tests))).pass_rate
    if answer is None:
        raise ValueError("grading needs a reference answer or code tests")
    return 1.0 if await agrade(text, answer) else 0.0


async def grade_result(
    result: SolveResult,
    *,
    answer: str | None = None,
    tests: Sequence[Mapping[str, Any]] | None = None,
    messages: bool = True,
    attach: bool = True,
) -> Grading:
    """Grade a result's answer and (optionally) every round's messages.

    Args:
        result: What a strategy returned.
        answer: The reference answer (math).
        tests: Stdin/stdout tests (code); a message or answer is "right" when it passes them all.
        messages: Also grade the messages of the rounds before the final one (needed for emergence).
        attach: Store the grading in ``result.info["grading"]``.
    """
    score = await score_text(result.answer, answer=answer, tests=tests)
    grading = Grading(
        predicted=None if tests else extract_answer(result.answer),
        score=score,
        correct=score >= 1.0,
    )
    if messages:
        for round_ in result.rounds[:-1] if len(result.rounds) > 1 else []:
            scores = [
                await score_text(final_conclusion(m), answer=answer, tests=tests) for m in round_.messages
            ]
            grading.rounds.append(RoundGrading(index=round_.index, correct=[s >= 1.0 for s in scores]))
        if grading.rounds:
            grading.emergent = emergent_correctness(grading.rounds[-1].correct, grading.correct)
    if attach:
        result.info["grading"] = grading.model_dump()
    return grading
