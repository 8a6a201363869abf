"""Training problems: our JSONL, the published PaCoRe-Train-8k layout, and synthetic large-integer arithmetic.

Every source becomes a `TrainProblem`: a `pacore_agent.evaluation.datasets.Problem` (id, statement, answer, domain,
tests, metadata) plus the chat ``conversation`` it was posed in and any ``responses`` cached with it.

- `load_problems`: our JSONL (``id``, ``problem``, ``answer``, ``domain`` ``"math"``/``"code"``, ``tests``
  for code), read by `pacore_agent.evaluation.datasets.load_jsonl`, so a bad line fails with ``file:line`` and field.
- `load_pacore_train`: the PaCoRe-Train-8k layout (``conversation``: chat messages; ``responses``: cached
  trajectories, the messages M of training; ``ground_truth``: the verifiable answer, or the tests of a code
  problem), as a JSON array or JSONL.
- `load_training_problems`: either, told apart by the first record's fields.
- `arithmetic_problems`: the paper's synthetic large-integer arithmetic (A, B uniform in [1e11, 1e13];
  ``+``, ``-``, ``*`` and ``A^B mod p`` with p = `ARITHMETIC_MODULUS`), seeded, answers exact.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pacore_agent.evaluation.datasets import CodeTest, DatasetFormatError, Domain, Problem, load_jsonl
from pacore_agent.exceptions import UsageError
from pacore_agent.prompts import Messages, last_user_index, message_text, normalize_problem

__all__ = [
    "ARITHMETIC_MAX",
    "ARITHMETIC_MIN",
    "ARITHMETIC_MODULUS",
    "ARITHMETIC_OPS",
    "ArithmeticOp",
    "TrainProblem",
    "arithmetic_problems",
    "load_pacore_train",
    "load_problems",
    "load_training_problems",
    "parse_tests",
]

ArithmeticOp = Literal["add", "sub", "mul", "powmod"]

ARITHMETIC_OPS: tuple[ArithmeticOp, ...] = ("add", "sub", "mul", "powmod")
"""The operations of the synthetic arithmetic task."""

ARITHMETIC_MIN = 10**11
"""Smallest operand of the synthetic arithmetic task (1e11)."""

ARITHMETIC_MAX = 10**13
"""Largest operand of the synthetic arithmetic task (1e13)."""

ARITHMETIC_MODULUS = 2**61 - 1
"""The fixed prime of ``A^B mod p``: the Mersenne prime 2^61 - 1 = 2305843009213693951.

Larger than the operands' square root and far larger than 1e9+7, so the residue is a 19-digit number
that cannot be guessed and must be computed.
"""


class TrainProblem(Problem):
    """A training problem: a `Problem` plus the conversation it was posed in and cached responses.

    Attributes:
        conversation: The chat messages of the problem (the last user message holds the statement);
            empty when the problem is just its ``problem`` text.
        responses: Cached first-round trajectories shipped with the problem (PaCoRe-Train-8k), in the
            source's order; a message pool can be built from them without generating.
    """

    conversation: list[dict[str, Any]] = Field(default_factory=list)
    responses: list[str] = Field(default_factory=list)

    @property
    def messages(self) -> Messages:
        """x: the conversation sent for this problem (one user message when there is no conversation)."""
        return normalize_problem(self.conversation or self.problem)

    @classmethod
    def from_problem(cls, problem: Problem) -> TrainProblem:
        """A `TrainProblem` from a benchmark `Problem`; ``conversation``/``responses`` metadata are lifted."""
        if isinstance(problem, TrainProblem):
            return problem
        metadata = dict(problem.metadata)
        conversation = metadata.pop("conversation", None) or []
        responses = metadata.pop("responses", None) or []
        return cls(
            **{**problem.model_dump(), "metadata": metadata},
            conversation=conversation,
            responses=[_response_text(r) for r in responses],
        )


# --------------------------------------------------------------------------------------------------
# Our JSONL


def load_problems(path: str | os.PathLike[str], *, domain: Domain | None = None) -> list[TrainProblem]:
    """Load training problems from our JSONL (the benchmark format).

    Each line needs ``id``, ``problem`` and ``answer`` (math) or a non-empty ``tests`` list (code); see
    `pacore_agent.evaluation.problems.load_jsonl`, which reads the file. Optional ``conversation`` (chat
    messages) and ``responses`` (cached trajectories) fields fill the `TrainProblem` fields of the same names.

    Args:
        path: The file, read by `load_jsonl`.
        domain: Passed to `load_jsonl`: the domain of lines that do not name one.

    Returns:
        The training problems, in file order.

    Raises:
        DatasetFormatError: A line `load_jsonl` refuses, or a bad ``conversation`` or ``responses`` field (the
            message names the file, and the line or record).
        FileNotFoundError: There is no such file.
    """
    problems = []
    for number, problem in enumerate(load_jsonl(path, domain=domain), start=1):
        try:
            train = TrainProblem.from_problem(problem)
            train.messages  # noqa: B018 - validates the conversation
        except (UsageError, ValueError, TypeError) as exc:
            raise DatasetFormatError(
                f"problem {problem.id!r} (record {number}): bad 'conversation' or 'responses': {exc}",
                path=path,
            ) from exc
        problems.append(train)
    return problems


# --------------------------------------------------------------------------------------------------
# PaCoRe-Train-8k


def parse_tests(value: Any) -> list[CodeTest] | None:
    """Code tests from a ground truth, or None when it does not hold tests (a math answer).

    Accepted shapes (also as a JSON string): a list of ``{"input", "output"[, "testtype"]}`` objects, or
    ``{"inputs": [...], "outputs": [...]}`` (the APPS/TACO layout).

    Args:
        value: A ``ground_truth`` value.

    Returns:
        The tests, or None.
    """
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped.startswith(("[", "{")):
            return None
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return None
    if isinstance(value, Mapping) and isinstance(value.get("inputs"), list):
        outputs = value.get("outputs")
        if not isinstance(outputs, list) or len(outputs) != len(value["inputs"]):
            return None
        value = [{"input": i, "output": o} for i, o in zip(value["inputs"], outputs, strict=True)]
    if not isinstance(value, list) or not value:
        return None
    tests = []
    for item in value:
        if not isinstance(item, Mapping) or "input" not in item or "output" not in item:
            return None
        tests.append(
            CodeTest(
                input=_as_text(item["input"]),
                output=_as_text(item["output"]),
                testtype=item.get("testtype", "stdin"),
            )
        )
    return tests


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _response_text(response: Any) -> str:
    """A cached response as text: a string, or a chat message (``reasoning_content`` re-wrapped)."""
    if isinstance(response, str):
        return response
    if isinstance(response, Mapping):
        content = message_text(dict(response))
        reasoning = response.get("reasoning_content")
        return f"<think>{reasoning}</think>{content}" if reasoning else content
    raise TypeError(f"a cached response must be a string or a chat message, got {type(response).__name__}")


_CODE_HINTS = ("code", "program", "livecodebench", "codeforces", "atcoder", "leetcode")


def _domain_hint(record: Mapping[str, Any]) -> Domain | None:
    for key in ("domain", "ability", "data_source", "source", "category", "subset"):
        value = record.get(key)
        if isinstance(value, str) and value:
            lowered = value.lower()
            if lowered in ("math", "code"):
                return lowered  # type: ignore[return-value]
            if any(hint in lowered for hint in _CODE_HINTS):
                return "code"
    return None


def _records(path: Path) -> Iterator[tuple[int, bool, Any]]:
    """(position, is_line_number, record) of a JSON array or a JSONL file."""
    text = path.read_text(encoding="utf-8")
    head = text.lstrip()[:1]
    if head == "[":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(
                f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", path=path
            ) from exc
        for index, record in enumerate(records):
            yield index, False, record
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(
                f"not valid JSON ({exc.msg} at column {exc.colno})", path=path, line=number
            ) from exc
        yield number, True, record


def load_pacore_train(
    path: str | os.PathLike[str], *, domain: Domain | None = None, id_prefix: str | None = None
) -> list[TrainProblem]:
    """Load the PaCoRe-Train-8k layout: ``conversation``, ``responses``, ``ground_truth`` per record.

    The file is a JSON array (``list[dict]``, as published) or JSONL. The statement is the last user
    message of ``conversation``; ``responses`` (strings or chat messages; may be absent) become
    `TrainProblem.responses`. The domain is the record's ``domain``/``ability``/``data_source``/``source``
    when one names it (``"code"`` or a code source), else ``domain``, else ``"code"`` when
    ``ground_truth`` holds tests (see `parse_tests`) and ``"math"`` otherwise. The id is the record's
    ``id`` when it has one, else ``<id_prefix>-<position>`` (prefix: the file's stem).

    Args:
        path: The file.
        domain: The domain of records that do not say.
        id_prefix: Prefix of generated ids.

    Returns:
        The problems, in file order.

    Raises:
        DatasetFormatError: A record is not an object, lacks a field or has one of the wrong type; the
            message names the file and line (JSONL) or record index (JSON array) and the field.
    """
    path = Path(path)
    prefix = id_prefix if id_prefix is not None else path.stem
    problems: list[TrainProblem] = []
    seen: dict[str, str] = {}
    for position, is_line, record in _records(path):
        where = f"line {position}" if is_line else f"record {position}"

        def fail(
            message: str, *, where: str = where, is_line: bool = is_line, line: int = position
        ) -> Exception:
            if is_line:
                return DatasetFormatError(message, path=path, line=line)
            return DatasetFormatError(f"{where}: {message}", path=path)

        if not isinstance(record, Mapping):
            raise fail(f"expected a JSON object, got {type(record).__name__}")
        for name in ("conversation", "ground_truth"):
            if name not in record:
                raise fail(f"missing field {name!r} (each record needs conversation and ground_truth)")
        conversation = record["conversation"]
        if not isinstance(conversation, list) or not conversation:
            raise fail("field 'conversation' must be a non-empty list of chat messages")
        try:
            messages = normalize_problem(conversation)
            statement = message_text(messages[last_user_index(messages)])
        except UsageError as exc:
            raise fail(f"field 'conversation': {exc}") from exc
        responses = record.get("responses") or []
        if not isinstance(responses, list):
            raise fail("field 'responses' must be a list of cached responses")
        try:
            texts = [_response_text(r) for r in responses]
        except (TypeError, UsageError) as exc:
            raise fail(f"field 'responses': {exc}") from exc
        truth = record["ground_truth"]
        tests = parse_tests(truth)
        line_domain = _domain_hint(record) or domain or ("code" if tests else "math")
        if line_domain == "code" and not tests:
            raise fail(
                "field 'ground_truth' of a code problem must hold tests ([{input, output}] or {inputs, outputs})"
            )
        if line_domain == "math" and (isinstance(truth, bool) or not isinstance(truth, str | int | float)):
            raise fail(
                f"field 'ground_truth' of a math problem must be a string or a number, got {type(truth).__name__}"
            )
        if line_domain == "math" and not str(truth).strip():
            raise fail("field 'ground_truth' is empty")
        raw_id = record.get("id")
        problem_id = str(raw_id) if raw_id not in (None, "") else f"{prefix}-{position}"
        if problem_id in seen:
            raise fail(f"duplicate id {problem_id!r} (first at {seen[problem_id]})")
        seen[problem_id] = where
        extra = {
            k: v for k, v in record.items() if k not in ("id", "conversation", "responses", "ground_truth")
        }
        problems.append(
            TrainProblem(
                id=problem_id,
                problem=statement,
                answer="" if line_domain == "code" else str(truth).strip(),
                domain=line_domain,
                tests=tests or [],
                metadata={**extra, "source_file": path.name},
                conversation=messages if len(messages) > 1 or messages[0].get("role") != "user" else [],
                responses=texts,
            )
        )
    return problems


def load_training_problems(
    path: str | os.PathLike[str], *, domain: Domain | None = None
) -> list[TrainProblem]:
    """Load either layout, told apart by the first record: ``conversation`` means PaCoRe-Train-8k.

    Args:
        path: The file (our JSONL, or PaCoRe-Train-8k as a JSON array or JSONL).
        domain: The domain of records that do not say.

    Returns:
        The problems, in file order.
    """
    for _, _, record in _records(Path(path)):
        if isinstance(record, Mapping) and "conversation" in record and "problem" not in record:
            return load_pacore_train(path, domain=domain)
        break
    return load_problems(path, domain=domain)


# --------------------------------------------------------------------------------------------------
# Synthetic large-integer arithmetic

_INSTRUCTION = " Give the exact integer, and put your final answer in \\boxed{}."

_TEMPLATES: Mapping[ArithmeticOp, Sequence[str]] = {
    "add": (
        "What is {a} + {b}?",
        "Compute the sum of {a} and {b}.",
        "Add {a} and {b}. What number do you get?",
        "A warehouse holds {a} items and receives another {b}. How many items does it hold now?",
    ),
    "sub": (
        "What is {a} - {b}?",
        "Subtract {b} from {a}.",
        "Compute {a} minus {b}.",
        "An account holds {a} units and {b} units are withdrawn. What is the balance afterwards?",
    ),
    "mul": (
        "What is {a} × {b}?",
        "Compute the product of {a} and {b}.",
        "Multiply {a} by {b}.",
        "A grid has {a} rows and {b} columns. How many cells does it have?",
    ),
    "powmod": (
        "Compute {a}^{b} mod {p}.",
        "What is the remainder when {a} raised to the power {b} is divided by {p}?",
        "Find {a}^{b} modulo the prime {p}.",
        "Let p = {p}. Compute the residue of {a}^{b} modulo p.",
    ),
}


def _exact(op: ArithmeticOp, a: int, b: int) -> int:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    return pow(a, b, ARITHMETIC_MODULUS)


def arithmetic_problems(
    count: int,
    *,
    seed: int = 0,
    ops: Sequence[ArithmeticOp] = ARITHMETIC_OPS,
    low: int = ARITHMETIC_MIN,
    high: int = ARITHMETIC_MAX,
) -> list[TrainProblem]:
    """The paper's synthetic large-integer arithmetic problems, seeded.

    Each problem draws an operation uniformly from ``ops`` and A, B uniformly from the integers in
    [``low``, ``high``] (default [1e11, 1e13]); the answer is the exact result as a decimal string
    (negative for ``A - B`` when B > A; ``A^B mod p`` with p = `ARITHMETIC_MODULUS`). The statement is one
    of a few natural phrasings, with an instruction to box the answer. The same seed gives the same
    problems; ids are ``arith-<seed>-<index>``.

    Args:
        count: How many problems.
        seed: Seed of every draw.
        ops: Operations to draw from (``"add"``, ``"sub"``, ``"mul"``, ``"powmod"``).
        low: Smallest operand.
        high: Largest operand.

    Returns:
        The problems (math domain).

    Raises:
        UsageError: A negative count, an unknown operation, or ``low > high``.
    """
    if count < 0:
        raise UsageError(f"count must be >= 0, got {count}")
    unknown = [op for op in ops if op not in ARITHMETIC_OPS]
    if unknown or not ops:
        raise UsageError(
            f"ops must be a non-empty selection of {', '.join(ARITHMETIC_OPS)}, got {list(ops)!r}"
        )
    if not 0 < low <= high:
        raise UsageError(f"operands need 0 < low <= high, got low={low}, high={high}")
    rng = random.Random(f"pacore-arithmetic|{seed}")
    problems = []
    for index in range(count):
        op = rng.choice(list(ops))
        a, b = rng.randint(low, high), rng.randint(low, high)
        text = rng.choice(_TEMPLATES[op]).format(a=a, b=b, p=ARITHMETIC_MODULUS) + _INSTRUCTION
        problems.append(
            TrainProblem(
                id=f"arith-{seed}-{index:05d}",
                problem=text,
                answer=str(_exact(op, a, b)),
                domain="math",
                metadata={
                    "source": "synthetic_arithmetic",
                    "op": op,
                    "a": a,
                    "b": b,
                    "seed": seed,
                    **({"modulus": ARITHMETIC_MODULUS} if op == "powmod" else {}),
                },
            )
        )
    return problems
