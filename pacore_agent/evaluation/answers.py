"""Answers: extraction, math equivalence, grading, voting, emergent correctness, and code grading.

Every function here is a pure policy over its input (apart from the math worker process and the code
sandbox, which are implementation details) and none of them raises on bad input: a missing, empty or
non-string answer is simply "no answer", which grades as wrong.

Math equivalence goes through ``math-verify``. Its timeouts rely on ``signal.alarm`` (main thread only)
and some inputs keep sympy busy for minutes, so the parse + verify step runs in a small persistent worker
process (`_math_worker.py`) with a per-call deadline: on timeout the worker is killed, restarted on the
next call, and the comparison reports a timeout (`math_verdict`), never a wrong answer. Cheap checks run first (normalised text, exact numbers,
free-text answers), so most calls never reach the worker. `math_equal` is safe from any thread;
`amath_equal` runs it off the event loop.

Extraction lives in `pacore_agent.evaluation.extraction`, the worker processes in ``_math_pool``; both
are re-exported here. Code grading (the paper's pass-rate reward) lives in `pacore_agent.evaluation.sandbox` and is re-exported here.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import anyio.to_thread

from pacore_agent.evaluation._math_pool import _POOL, GraderUnavailableError
from pacore_agent.evaluation.extraction import extract_answer, strip_math_delimiters
from pacore_agent.evaluation.sandbox import (
    CodeTestResult,
    SandboxConfig,
    TestVerdict,
    Verdict,
    arun_code_tests,
    extract_program,
    grade_code,
    run_code_tests,
)

__all__ = [
    "DEFAULT_MATH_TIMEOUT",
    "AnswerClass",
    "CodeTestResult",
    "GradeStatus",
    "GraderUnavailableError",
    "MathVerdict",
    "SandboxConfig",
    "SynthesisOutcome",
    "TestVerdict",
    "Verdict",
    "VoteResult",
    "agrade",
    "amath_equal",
    "arun_code_tests",
    "avote",
    "check_answer",
    "emergent_correctness",
    "extract_answer",
    "extract_program",
    "grade",
    "grade_code",
    "group_answers",
    "math_equal",
    "math_verdict",
    "normalize_answer",
    "run_code_tests",
    "shutdown_math_workers",
    "vote",
]

logger = logging.getLogger(__name__)

GradeStatus = Literal["graded", "timeout", "error"]
"""How grading one answer ended: graded, or not (math-verify timed out, or erred)."""

DEFAULT_MATH_TIMEOUT = 5.0
"""Seconds one `math_equal` call may spend in math-verify before it counts as not equal."""

_BARE_ANSWER_MAX_CHARS = 100
"""`grade` takes a marker-less text as the answer itself only when it is one line at most this long."""

# ---------------------------------------------------------------------------------------------------------
# Normalisation and cheap equivalence
# ---------------------------------------------------------------------------------------------------------

_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_TEXT_WRAPPER_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname) *\{([^{}]*)\}"
)
_SPACING_RE = re.compile(r"\\[!,;:>]|\\q?quad\b|~")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_INT_OR_RATIO_RE = re.compile(r"([+-]?)(\d+)(?:/(\d+))?")
_TEX_FRACTION_RE = re.compile(r"([+-]?)\\frac\{(\d+)\}\{(\d+)\}")
_DECIMAL_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_WORD_RE = re.compile(r"(?<![\\A-Za-z0-9])[A-Za-z]{3,}(?![A-Za-z])")
_MATH_WORDS = frozenset(
    {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh"}
    | {"log", "ln", "exp", "lim", "max", "min", "gcd", "lcm", "mod", "det", "inf", "infty", "sqrt"}
    | {"frac", "cdot", "times", "pmod", "bmod", "deg"}
)


def normalize_answer(answer: str) -> str:
    r"""A canonical spelling of an answer for cheap comparisons and voting keys.

    Strips surrounding math delimiters, ``\text{}``-style wrappers, ``\left``/``\right``, LaTeX spacing,
    degree signs, all whitespace and a trailing period; ``\dfrac``/``\tfrac`` become ``\frac``; an
    integer written with thousands separators (``1,234`` or ``1{,}234``) loses them. ``1, 234`` (with a
    space) is left alone: it reads as two numbers. Case is kept (``A`` and ``a`` may differ in maths).

    Args:
        answer: The answer text.

    Returns:
        The normalised text ("" for non-strings).
    """
    if not isinstance(answer, str):
        return ""
    text = strip_math_delimiters(answer).rstrip(".").strip()
    text = text.replace("{,}", ",")
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    text = _TEXT_WRAPPER_RE.sub(r"\1", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", text)
    text = _SPACING_RE.sub(" ", text)
    text = _DEGREE_RE.sub("", text)
    return re.sub(r"\s+", "", text).rstrip(".")


def _exact_number(key: str) -> tuple[Fraction, bool] | None:
    r"""``(value, exact)`` for a normalised plain number: integer, ``a/b``, ``\frac{a}{b}`` or decimal."""
    if match := _INT_OR_RATIO_RE.fullmatch(key) or _TEX_FRACTION_RE.fullmatch(key):
        sign, numerator, denominator = match.groups()
    elif _DECIMAL_RE.fullmatch(key):
        return Fraction(key), False
    else:
        return None
    if denominator is not None and int(denominator) == 0:
        return None
    value = Fraction(int(numerator), int(denominator or 1))
    return (-value if sign == "-" else value), True


def _is_text_answer(answer: str) -> bool:
    """Whether an answer is prose ("odd n", "no solutions") rather than a formula math-verify can read."""
    plain = _TEXT_WRAPPER_RE.sub(r" \1 ", answer)
    return any(word.lower() not in _MATH_WORDS for word in _WORD_RE.findall(plain))


def _text_key(answer: str) -> str:
    plain = _TEXT_WRAPPER_RE.sub(r" \1 ", strip_math_delimiters(answer)).lower()
    plain = re.sub(r"[$\\{}]", " ", plain)
    plain = re.sub(r"\s+", " ", plain).strip(" .")
    return plain


def _cheap_verdict(candidate: str, reference: str) -> bool | None:
    """Decide without sympy where that is sound: True/False, or None to ask math-verify."""
    key_a, key_b = normalize_answer(candidate), normalize_answer(reference)
    if not key_a or not key_b:
        return False
    if key_a == key_b:
        return True
    number_a, number_b = _exact_number(key_a), _exact_number(key_b)
    if number_a is not None and number_b is not None:
        if number_a[0] == number_b[0]:
            return True
        if number_a[1] and number_b[1]:  # two exact rationals that differ
            return False
        return None  # a decimal is involved: math-verify's rounding decides
    if _is_text_answer(candidate) or _is_text_answer(reference):
        return _text_key(candidate) == _text_key(reference)
    return None


def _latex_for_verify(answer: str) -> str:
    r"""Wrap a bare answer so that math-verify's LaTeX extraction finds it (``\boxed{...}``)."""
    text = strip_math_delimiters(answer).rstrip(".").strip()
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if "$" in text:  # several formulas in prose: math-verify finds them itself
        return answer
    if text.count("{") == text.count("}"):
        return "\\boxed{" + text + "}"
    return "$" + text + "$"


# ---------------------------------------------------------------------------------------------------------
# The math-verify worker process
# ---------------------------------------------------------------------------------------------------------

_CACHE_SIZE = 4096

_cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
_cache_lock = threading.Lock()


def shutdown_math_workers() -> None:
    """Stop the idle math-verify worker processes now (they also stop at interpreter exit).

    A later `math_equal` call that needs one starts a fresh worker.
    """
    _POOL.close()


@dataclass(frozen=True, slots=True)
class MathVerdict:
    """How a math comparison ended.

    Attributes:
        status: ``"graded"`` (``equal`` holds the answer), ``"timeout"`` (math-verify ran out of time)
            or ``"error"`` (math-verify raised, or its worker died); ``equal`` is None unless graded.
        equal: Whether the two answers are equivalent, when graded.
        error: Why the comparison did not finish (timeout and error only).
    """

    status: GradeStatus
    equal: bool | None = None
    error: str | None = None


def math_verdict(a: str, b: str, *, timeout: float = DEFAULT_MATH_TIMEOUT) -> MathVerdict:
    r"""Whether two final answers are mathematically equivalent, saying so when it cannot tell.

    Cheap checks first: equal normalised text (see `normalize_answer`, so ``1,234 == 1234``), exact
    rationals (``0.5``, ``1/2``, ``\frac{1}{2}``), and free-text answers ("odd n", "no solutions"),
    which are compared as lower-cased text. Everything else goes to math-verify (``parse`` both, then
    ``verify(reference, candidate)``): fractions and radicals in any form, intervals, tuples (ordered),
    comma-separated answer lists (compared as sets, so order does not matter), equations, and decimals
    within math-verify's rounding.

    math-verify runs in a worker process; after ``timeout`` seconds the worker is killed (restarted by
    the next call) and the verdict is ``"timeout"``. An exception inside math-verify, or a worker that
    dies, is an ``"error"`` with its reason. Neither is ever reported as "not equal". Safe from any thread.

    Args:
        a: The candidate answer (e.g. extracted from a model's conclusion).
        b: The reference answer. The comparison is symmetric except where math-verify is not.
        timeout: Seconds math-verify may spend on this pair.

    Returns:
        The verdict. Empty or non-string input is graded not equal.

    Raises:
        GraderUnavailableError: No math-verify worker can be started (math-verify missing or broken).
    """
    if not isinstance(a, str) or not isinstance(b, str):
        return MathVerdict("graded", False)
    try:
        cheap = _cheap_verdict(a, b)
    except Exception:  # pragma: no cover - defensive: the cheap checks are total
        cheap = None
    if cheap is not None:
        return MathVerdict("graded", cheap)
    key = (normalize_answer(a), normalize_answer(b))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return MathVerdict("graded", _cache[key])
    outcome, why = _POOL.check(_latex_for_verify(a), _latex_for_verify(b), max(float(timeout), 0.05))
    if outcome == "timeout" or outcome == "error":  # not cached: they may not recur
        return MathVerdict(outcome, None, why)
    with _cache_lock:
        _cache[key] = outcome == "equal"
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return MathVerdict("graded", outcome == "equal")


def math_equal(a: str, b: str, *, timeout: float = DEFAULT_MATH_TIMEOUT) -> bool:
    """Whether two final answers are mathematically equivalent (`math_verdict`, as a plain bool).

    For voting and other uses where "cannot tell" may safely read as "not equal": a timeout, an error or
    a grader that cannot start (logged as a warning) give False. It never hangs and never raises. Grading,
    where that would be dishonest, goes through `math_verdict` or
    `pacore_agent.evaluation.grading.grade_message`.

    Args:
        a: The candidate answer.
        b: The reference answer.
        timeout: Seconds math-verify may spend on this pair.

    Returns:
        True only when the answers were compared and found equivalent.
    """
    try:
        return math_verdict(a, b, timeout=timeout).equal is True
    except GraderUnavailableError as exc:
        logger.warning("math_equal: %s; %r vs %r counts as different", exc, a, b)
        return False


# ASYNC109: ``timeout`` is math-verify's budget, as in the sync twin, not a deadline on the await.
async def amath_equal(a: str, b: str, *, timeout: float = DEFAULT_MATH_TIMEOUT) -> bool:  # noqa: ASYNC109
    """`math_equal` in a worker thread, so the event loop never blocks on it.

    Args:
        a: The candidate answer.
        b: The reference answer.
        timeout: Seconds math-verify may spend on this pair.

    Returns:
        The same as `math_equal`.
    """
    return await anyio.to_thread.run_sync(
        functools.partial(math_equal, a, b, timeout=timeout), abandon_on_cancel=True
    )


# ---------------------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------------------


def _answer_of(response_or_answer: str | None, fallback_last_number: bool) -> str | None:
    answer = extract_answer(response_or_answer, fallback_last_number=fallback_last_number)
    if answer is None and isinstance(response_or_answer, str):
        bare = response_or_answer.strip()
        if bare and "\n" not in bare and len(bare) <= _BARE_ANSWER_MAX_CHARS:
            answer = strip_math_delimiters(bare) or None
    return answer


def check_answer(
    response_or_answer: str | None,
    reference: str,
    *,
    timeout: float = DEFAULT_MATH_TIMEOUT,
    fallback_last_number: bool = False,
) -> tuple[str | None, MathVerdict]:
    """The extracted answer of a conclusion (or bare answer) and its verdict against the reference.

    The answer is `extract_answer` of the text; a text with no marked answer that is a single line of
    at most 100 characters is taken as the answer itself (so ``"1,234"`` matches ``"1234"``). No answer
    (None, empty, non-string or answer-less input) is graded not equal.

    Args:
        response_or_answer: A model's conclusion, or an answer.
        reference: The reference answer.
        timeout: Seconds math-verify may spend on the comparison.
        fallback_last_number: Let `extract_answer` fall back to the last number in the text.

    Raises:
        GraderUnavailableError: No math-verify worker can be started.
    """
    if not isinstance(reference, str) or not reference.strip():
        return None, MathVerdict("graded", False)
    answer = _answer_of(response_or_answer, fallback_last_number)
    if answer is None:
        return None, MathVerdict("graded", False)
    return answer, math_verdict(answer, reference, timeout=timeout)


def grade(
    response_or_answer: str | None,
    reference: str,
    *,
    timeout: float = DEFAULT_MATH_TIMEOUT,
    fallback_last_number: bool = False,
) -> bool:
    """The paper's binary math reward as a plain bool: does a conclusion match the reference?

    `check_answer` where "cannot tell" reads as False (as `math_equal`). Benchmarks and rewards, where a
    grader failure must not pass for a wrong answer, use `pacore_agent.evaluation.grading.grade_message`.

    The arguments are those of `check_answer`.

    Returns:
        True when the answer was compared and is equivalent to the reference. Never raises.
    """
    try:
        _, verdict = check_answer(
            response_or_answer, reference, timeout=timeout, fallback_last_number=fallback_last_number
        )
    except GraderUnavailableError as exc:
        logger.warning("grade: %s; counted as wrong", exc)
        return False
    return verdict.equal is True


async def agrade(
    response_or_answer: str | None,
    reference: str,
    *,
    timeout: float = DEFAULT_MATH_TIMEOUT,  # noqa: ASYNC109 - math-verify's budget, as in `grade`
    fallback_last_number: bool = False,
) -> bool:
    """`grade` in a worker thread, for async callers.

    The arguments are those of `check_answer`.

    Returns:
        The same as `grade`.
    """
    call = functools.partial(
        grade, response_or_answer, reference, timeout=timeout, fallback_last_number=fallback_last_number
    )
    return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)


# ---------------------------------------------------------------------------------------------------------
# Voting
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnswerClass:
    """Answers judged equivalent by `math_equal`.

    Attributes:
        representative: The class's first answer, as written (None for the class of missing answers).
        members: Indices (into the voted list) of the answers in this class, ascending.
    """

    representative: str | None
    members: tuple[int, ...]

    @property
    def count(self) -> int:
        """How many answers the class holds."""
        return len(self.members)


@dataclass(frozen=True, slots=True)
class VoteResult:
    """The outcome of a majority vote.

    Attributes:
        winner: The winning class; None only when there was nothing to vote on.
        classes: Every class, ordered by the index of its first member.
    """

    winner: AnswerClass | None
    classes: tuple[AnswerClass, ...]

    @property
    def answer(self) -> str | None:
        """The winning answer (its representative); None when no answer was given at all."""
        return self.winner.representative if self.winner else None

    @property
    def counts(self) -> dict[str | None, int]:
        """Votes per class, keyed by representative, in class order."""
        return {cls.representative: cls.count for cls in self.classes}

    @property
    def total(self) -> int:
        """How many answers were voted on (missing ones included)."""
        return sum(cls.count for cls in self.classes)


def group_answers(
    answers: Sequence[str | None], *, timeout: float = DEFAULT_MATH_TIMEOUT
) -> list[AnswerClass]:
    """Partition answers into equivalence classes under `math_equal`.

    Each answer joins the first existing class whose representative it equals (by `normalize_answer`
    first, then `math_equal`); otherwise it opens a new class. Missing answers (None, empty or non-string)
    form one class with representative None.

    Args:
        answers: Final answers, e.g. from `extract_answer` over the trajectories of a round.
        timeout: Seconds each `math_equal` call may take.

    Returns:
        The classes, ordered by the index of their first member.
    """
    members: list[list[int]] = []
    representatives: list[str | None] = []
    by_key: dict[str, int] = {}
    missing: int | None = None
    for index, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            if missing is None:
                missing = len(members)
                members.append([])
                representatives.append(None)
            members[missing].append(index)
            continue
        key = normalize_answer(answer)
        slot = by_key.get(key)
        if slot is None:
            slot = next(
                (
                    i
                    for i, rep in enumerate(representatives)
                    if rep is not None and math_equal(answer, rep, timeout=timeout)
                ),
                None,
            )
        if slot is None:
            slot = len(members)
            members.append([])
            representatives.append(answer)
        by_key.setdefault(key, slot)
        members[slot].append(index)
    return [AnswerClass(rep, tuple(ids)) for rep, ids in zip(representatives, members, strict=True)]


def vote(answers: Sequence[str | None], *, timeout: float = DEFAULT_MATH_TIMEOUT) -> VoteResult:
    """Majority vote over answers, equivalent forms counted together (self-consistency).

    Tie rule: among the classes with the most votes, the one whose first member comes earliest in
    ``answers`` wins. Missing answers never win unless every answer is missing.

    Args:
        answers: Final answers; None marks a trajectory without one.
        timeout: Seconds each `math_equal` call may take.

    Returns:
        The winner and the count of every class. ``winner`` is None only for an empty list.
    """
    classes = tuple(group_answers(answers, timeout=timeout))
    candidates = [cls for cls in classes if cls.representative is not None] or list(classes)
    # max() keeps the first maximal element and classes are ordered by first member: the tie rule.
    winner = max(candidates, key=lambda cls: cls.count, default=None)
    return VoteResult(winner=winner, classes=classes)


async def avote(
    answers: Sequence[str | None],
    *,
    timeout: float = DEFAULT_MATH_TIMEOUT,  # noqa: ASYNC109 - per-comparison budget, as in `vote`
) -> VoteResult:
    """`vote` in a worker thread, for async callers.

    Args:
        answers: Final answers; None marks a trajectory without one.
        timeout: Seconds each `math_equal` call may take.

    Returns:
        The same as `vote`.
    """
    return await anyio.to_thread.run_sync(
        functools.partial(vote, list(answers), timeout=timeout), abandon_on_cancel=True
    )


# ---------------------------------------------------------------------------------------------------------
# Emergent correctness
# ---------------------------------------------------------------------------------------------------------


def emergent_correctness(message_correct: Sequence[bool | None], synthesis_correct: bool | None) -> bool:
    """Whether a synthesis is right although every message it was given is wrong.

    The paper's "emergent correctness": the synthesis did not copy a correct input, it produced one.

    Args:
        message_correct: For each input message, whether its answer is correct (None: not graded).
        synthesis_correct: Whether the synthesis's answer is correct (None: not graded).

    Returns:
        True when there is at least one message, every one was graded wrong, and the synthesis is right.
    """
    return bool(message_correct) and synthesis_correct is True and all(c is False for c in message_correct)


@dataclass(frozen=True, slots=True)
class SynthesisOutcome:
    """How one synthesis fared against the messages it was given (for reports and curricula).

    Attributes:
        messages: Number of input messages.
        messages_correct: How many of them were correct.
        synthesis_correct: Whether the synthesis was correct.
    """

    messages: int
    messages_correct: int
    synthesis_correct: bool

    @classmethod
    def from_flags(cls, message_correct: Sequence[bool], synthesis_correct: bool) -> SynthesisOutcome:
        """Build from per-message correctness flags.

        Args:
            message_correct: For each input message, whether its answer is correct.
            synthesis_correct: Whether the synthesis's answer is correct.

        Returns:
            The outcome.
        """
        return cls(len(message_correct), sum(1 for ok in message_correct if ok), bool(synthesis_correct))

    @property
    def message_accuracy(self) -> float:
        """Fraction of correct messages (0.0 when there were none)."""
        return self.messages_correct / self.messages if self.messages else 0.0

    @property
    def emergent(self) -> bool:
        """Every message wrong and the synthesis right (see `emergent_correctness`)."""
        return self.messages > 0 and self.messages_correct == 0 and self.synthesis_correct

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary, derived fields included."""
        return {
            "messages": self.messages,
            "messages_correct": self.messages_correct,
            "synthesis_correct": self.synthesis_correct,
            "message_accuracy": self.message_accuracy,
            "emergent": self.emergent,
        }
