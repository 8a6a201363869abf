"""Grading: ONE message grader, and a whole `SolveResult` graded with it.

`grade_message` (and its async twin `agrade_message`) is the one way a text is graded against a problem
in pacore: benchmark answers and messages (`grade_result`), the benchmark's trajectory pool, the training
message pool, and the training reward all call it. It returns a `MessageGrade`:

- ``score``: 1.0/0.0 for math; the pass rate of the tests for code. 0.0 when not graded.
- ``status``: ``"graded"``, ``"timeout"`` (math-verify ran out of time) or ``"error"`` (math-verify raised,
  its worker died, the sandbox itself failed on a test), with ``error`` saying why. A grade that did not happen has
  ``correct=None``: it is never reported as a wrong answer. A grader that cannot start at all raises
  `GraderUnavailableError`, which stops a benchmark run.
- ``truncated``: the text hit the length limit (``finish_reason == "length"``). A response cut off inside
  its reasoning has no ``</think>``, so C returns the whole text, and a ``\\boxed{}`` written mid-reasoning
  would be graded: a reward hole. The ``truncation`` setting says what happens then:

  - ``"zero"`` (default): score 0, ``correct=False``, flagged;
  - ``"mask"``: score 0, ``correct=None`` and ``masked=True`` (training leaves it out of the loss);
  - ``"grade"``: graded like any other text, flagged.

Emergent correctness (the PaCoRe report's measure of real synthesis): the answer is right although every
message the final round was given was wrong. Benchmarks report its rate; training uses the same flags.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

import anyio.to_thread
from pydantic import BaseModel, Field

from pacore_agent.compactors import final_conclusion
from pacore_agent.evaluation.answers import (
    DEFAULT_MATH_TIMEOUT,
    GraderUnavailableError,
    GradeStatus,
    check_answer,
    emergent_correctness,
    extract_answer,
)
from pacore_agent.evaluation.sandbox import (
    CodeTestResult,
    SandboxConfig,
    Verdict,
    arun_code_tests,
    extract_program,
    run_code_tests,
)
from pacore_agent.evaluation.store import PoolMessage
from pacore_agent.exceptions import UsageError
from pacore_agent.results import RoundResult, SolveResult, Trajectory, Usage

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from Python 3.12

__all__ = [
    "DEFAULT_TRUNCATION",
    "GradeOptions",
    "GradeStatus",
    "GradedProblem",
    "GraderUnavailableError",
    "Grading",
    "MessageGrade",
    "RoundGrading",
    "Truncation",
    "agrade_message",
    "grade_message",
    "grade_pool_message",
    "grade_result",
    "problem_reference",
]

Truncation = Literal["zero", "mask", "grade"]
"""What a text that hit the length limit earns: 0 (``zero``), nothing (``mask``), or its grade (``grade``)."""

DEFAULT_TRUNCATION: Truncation = "zero"

_TRUNCATIONS = ("zero", "mask", "grade")


@dataclass(frozen=True, slots=True)
class MessageGrade:
    """How one text (a message, an answer, a response) graded against its problem.

    Attributes:
        score: 1.0/0.0 (math) or the pass rate of the tests (code); 0.0 when not graded or masked.
        correct: ``score == 1``; None when not graded (timeout, error) or masked.
        predicted: The extracted answer (math), or None (code, or no answer).
        status: ``"graded"``, ``"timeout"`` or ``"error"``.
        error: Why the grade did not happen (timeout and error only).
        truncated: The text hit the length limit (``finish_reason == "length"``).
        masked: Truncated under ``truncation="mask"``: leave it out (of a loss, of a mean).
    """

    score: float
    correct: bool | None
    predicted: str | None = None
    status: GradeStatus = "graded"
    error: str | None = None
    truncated: bool = False
    masked: bool = False

    @property
    def graded(self) -> bool:
        """Whether a grade was given (``status == "graded"`` and not masked)."""
        return self.status == "graded" and not self.masked


class GradedProblem(Protocol):
    """What grading needs of a problem: a benchmark `Problem` and a training problem both fit."""

    @property
    def domain(self) -> str:
        """``"math"`` or ``"code"``."""
        ...

    @property
    def answer(self) -> str:
        """The reference answer (math)."""
        ...

    @property
    def tests(self) -> Sequence[Any]:
        """Stdin/stdout tests as pydantic models (code)."""
        ...


def problem_reference(problem: GradedProblem) -> dict[str, Any]:
    """The ``answer=`` or ``tests=`` keyword argument of `grade_message` for a problem, by its domain.

    Example::

        grade = await agrade_message(text, finish_reason=t.finish_reason, **problem_reference(problem))
    """
    if problem.domain == "code":
        return {"tests": [t.model_dump() for t in problem.tests]}
    return {"answer": problem.answer}


def _start(
    text: str | None,
    answer: str | None,
    tests: Sequence[Mapping[str, Any]] | None,
    finish_reason: str | None,
    truncation: str,
) -> tuple[str, bool, MessageGrade | None]:
    """Check the arguments; the conclusion to grade, whether it was truncated, and a grade decided already."""
    if truncation not in _TRUNCATIONS:
        raise UsageError(f"truncation must be 'zero', 'mask' or 'grade', got {truncation!r}: set truncation=")
    if not tests and (answer is None or not answer.strip()):
        raise UsageError("grading needs a reference answer (math) or tests (code)")
    conclusion = final_conclusion(text or "")
    truncated = finish_reason == "length"
    if not truncated or truncation == "grade":
        return conclusion, truncated, None
    predicted = None if tests else extract_answer(conclusion)
    masked = truncation == "mask"
    return (
        conclusion,
        True,
        MessageGrade(0.0, None if masked else False, predicted, truncated=True, masked=masked),
    )


def _from_code(result: CodeTestResult, truncated: bool) -> MessageGrade:
    broken = next((v for v in result.verdicts if v.verdict is Verdict.SANDBOX_ERROR), None)
    if broken is not None:  # the sandbox, not the program, failed: no grade
        why = f"the sandbox failed on test {broken.index}: {broken.detail or 'no detail'}"
        return MessageGrade(0.0, None, None, "error", why, truncated)
    return MessageGrade(result.pass_rate, result.pass_rate >= 1.0, None, truncated=truncated)


def _code_error(exc: OSError, truncated: bool) -> MessageGrade:
    return MessageGrade(0.0, None, None, "error", f"the sandbox failed: {exc}", truncated)


def _from_math(conclusion: str, answer: str, timeout: float, truncated: bool) -> MessageGrade:
    predicted, verdict = check_answer(conclusion, answer, timeout=timeout)
    if verdict.status != "graded":
        return MessageGrade(0.0, None, predicted, verdict.status, verdict.error, truncated)
    return MessageGrade(1.0 if verdict.equal else 0.0, verdict.equal is True, predicted, truncated=truncated)


def grade_message(
    text: str | None,
    *,
    answer: str | None = None,
    tests: Sequence[Mapping[str, Any]] | None = None,
    finish_reason: str | None = None,
    truncation: Truncation = DEFAULT_TRUNCATION,
    sandbox: SandboxConfig | None = None,
    math_timeout: float = DEFAULT_MATH_TIMEOUT,
) -> MessageGrade:
    """Grade one text against a problem: the one message grader (see the module docstring).

    The text graded is C(text) (`final_conclusion`), so a whole trajectory, a message or a conclusion may
    be passed. Math: the extracted answer against ``answer`` (math-verify). Code: the pass rate of the
    conclusion's program on ``tests`` in the sandbox.

    Args:
        text: The trajectory, message or conclusion.
        answer: The reference answer (math).
        tests: Stdin/stdout tests (code); when given, the text is graded as code.
        finish_reason: The trajectory's finish reason; ``"length"`` marks it truncated.
        truncation: What a truncated text earns: ``"zero"`` (default), ``"mask"`` or ``"grade"``.
        sandbox: Sandbox limits for code.
        math_timeout: Seconds math-verify may spend on the comparison.

    Returns:
        The grade; blocking (sandbox, math-verify): from async code use `agrade_message`.

    Raises:
        UsageError: No answer and no tests, or an unknown ``truncation``.
        GraderUnavailableError: The math grader cannot start (math-verify missing or broken).
    """
    conclusion, truncated, decided = _start(text, answer, tests, finish_reason, truncation)
    if decided is not None:
        return decided
    if tests:
        try:
            return _from_code(run_code_tests(extract_program(conclusion), list(tests), sandbox), truncated)
        except OSError as exc:
            return _code_error(exc, truncated)
    assert answer is not None
    return _from_math(conclusion, answer, math_timeout, truncated)


class GradeOptions(TypedDict, total=False):
    """The keyword arguments of `grade_message`, which `agrade_message` takes too (same defaults)."""

    answer: str | None
    tests: Sequence[Mapping[str, Any]] | None
    finish_reason: str | None
    truncation: Truncation
    sandbox: SandboxConfig | None
    math_timeout: float


async def agrade_message(text: str | None, **options: Unpack[GradeOptions]) -> MessageGrade:
    """`grade_message` off the event loop (math-verify and the sandbox run in worker threads).

    The arguments are those of `grade_message`.

    Returns:
        The same as `grade_message`.
    """
    unknown = options.keys() - GradeOptions.__optional_keys__
    if unknown:  # as an explicit signature would: a misspelt keyword must not be ignored
        raise TypeError(f"agrade_message() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    answer, tests = options.get("answer"), options.get("tests")
    truncation = options.get("truncation", DEFAULT_TRUNCATION)
    conclusion, truncated, decided = _start(text, answer, tests, options.get("finish_reason"), truncation)
    if decided is not None:
        return decided
    if tests:
        program = extract_program(conclusion)
        try:
            return _from_code(await arun_code_tests(program, list(tests), options.get("sandbox")), truncated)
        except OSError as exc:
            return _code_error(exc, truncated)
    assert answer is not None
    math_timeout = options.get("math_timeout", DEFAULT_MATH_TIMEOUT)
    call = functools.partial(_from_math, conclusion, answer, math_timeout, truncated)
    return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)


async def grade_pool_message(
    message: str,
    problem: GradedProblem,
    *,
    finish_reason: str | None,
    usage: Usage,
    trajectory: Trajectory | None = None,
    truncation: Truncation = DEFAULT_TRUNCATION,
    sandbox: SandboxConfig | None = None,
    math_timeout: float = DEFAULT_MATH_TIMEOUT,
) -> PoolMessage:
    """A message of a trajectory pool (the benchmark's and the training pool's), graded by `agrade_message`.

    Args:
        message: C(trajectory).
        problem: Its problem (answer or tests).
        finish_reason: The trajectory's finish reason (``"length"``: truncated).
        usage: The trajectory's tokens.
        trajectory: The full trajectory, to keep beside the message (None: keep only the message).
        truncation: What a truncated message earns.
        sandbox: Sandbox limits for code.
        math_timeout: Seconds math-verify may spend.
    """
    grade = await agrade_message(
        message,
        finish_reason=finish_reason,
        truncation=truncation,
        sandbox=sandbox,
        math_timeout=math_timeout,
        **problem_reference(problem),
    )
    return PoolMessage(
        message=message,
        predicted=grade.predicted,
        correct=grade.correct,
        score=grade.score,
        usage=usage,
        finish_reason=finish_reason,
        trajectory=trajectory,
    )


class RoundGrading(BaseModel):
    """Correctness of one round's messages (in reference order); None for a message not graded."""

    index: int
    correct: list[bool | None] = Field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        """Share of right messages among the graded ones, ``None`` when none was graded."""
        graded = [c for c in self.correct if c is not None]
        return sum(graded) / len(graded) if graded else None


class Grading(BaseModel):
    """How a result scored against the reference.

    Attributes:
        predicted: The extracted final answer (math) or ``None`` (code).
        score: 1.0/0.0 for math; the pass rate for code; 0.0 when not graded.
        correct: ``score == 1``; None when the answer could not be graded (see ``status``).
        status: ``"graded"``, ``"timeout"`` or ``"error"`` (the final answer's grade).
        error: Why the final answer was not graded.
        truncated: The final answer's trajectory hit the length limit.
        rounds: Message correctness of every round before the final one (when graded).
        emergent: Every message given to the final round was graded wrong, and the answer is right.
    """

    predicted: str | None = None
    score: float = 0.0
    correct: bool | None = False
    status: GradeStatus = "graded"
    error: str | None = None
    truncated: bool = False
    rounds: list[RoundGrading] = Field(default_factory=list)
    emergent: bool = False


async def _grade_round(round_: RoundResult, grade: Callable[..., Awaitable[MessageGrade]]) -> RoundGrading:
    """Grade a round's messages in reference order, each with its own trajectory's finish reason."""
    finish = {t.index: t.finish_reason for t in round_.trajectories}
    flags = []
    for index, message in zip(round_.order, round_.messages, strict=False):
        flags.append((await grade(message, finish_reason=finish.get(index))).correct)
    return RoundGrading(index=round_.index, correct=flags)


async def grade_result(
    result: SolveResult,
    *,
    answer: str | None = None,
    tests: Sequence[Mapping[str, Any]] | None = None,
    messages: bool = True,
    attach: bool = True,
    truncation: Truncation = DEFAULT_TRUNCATION,
    known: Mapping[tuple[str, str | None], MessageGrade] | None = None,
) -> Grading:
    """Grade a result's answer and (optionally) every round's messages with `agrade_message`.

    Args:
        result: What a strategy returned.
        answer: The reference answer (math).
        tests: Stdin/stdout tests (code); a message or answer is "right" when it passes them all.
        messages: Also grade the messages of the rounds before the final one (needed for emergence).
        attach: Store the grading in ``result.info["grading"]``.
        truncation: What a text that hit the length limit earns (see the module docstring).
        known: Grades already given, by (text, finish reason), reused instead of grading the same text
            again (a pool's grades: `pacore_agent.evaluation.bench.pool.pooled_grades`); they must have
            been given under the same ``truncation``.

    Raises:
        GraderUnavailableError: The math grader cannot start.
    """

    async def grade(text: str | None, *, finish_reason: str | None) -> MessageGrade:
        given = known.get((text or "", finish_reason)) if known else None
        if given is not None:
            return given
        return await agrade_message(
            text, answer=answer, tests=tests, finish_reason=finish_reason, truncation=truncation
        )

    final = await grade(result.answer, finish_reason=result.final.finish_reason if result.final else None)
    grading = Grading.model_validate(final, from_attributes=True)  # the final answer's grade, field for field
    if messages:
        for round_ in result.rounds[:-1] if len(result.rounds) > 1 else []:
            grading.rounds.append(await _grade_round(round_, grade))
        given = grading.rounds[-1].correct if grading.rounds else []
        grading.emergent = emergent_correctness(given, grading.correct)
    if attach:
        result.info["grading"] = grading.model_dump()
    return grading
