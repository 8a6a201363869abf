"""Problems and problem files: the `Problem` model and JSONL files that `load_jsonl` / `write_jsonl` read and write.

The named benchmarks that produce these files live in `pacore_agent.evaluation.datasets`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pacore_agent.exceptions import UsageError

__all__ = [
    "CodeTest",
    "DatasetFormatError",
    "Domain",
    "Problem",
    "atomic_write_text",
    "load_jsonl",
    "write_jsonl",
]

Domain = Literal["math", "code"]

_REQUIRED_FIELDS = ("id", "problem", "answer")
_CORE_FIELDS = frozenset({"id", "problem", "answer", "domain", "tests", "metadata"})


class DatasetFormatError(UsageError):
    """A line of a problem file is not a valid problem.

    Attributes:
        path: The file.
        line: The 1-based line number, when one line is at fault.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str], line: int | None = None) -> None:
        where = f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.line = line


class CodeTest(BaseModel):
    """One test of a code problem: feed ``input``, expect ``output``.

    Attributes:
        input: Standard input (``"stdin"``) or the call's arguments (``"functional"``).
        output: The expected output.
        testtype: ``"stdin"`` for whole programs, ``"functional"`` for a function call (LeetCode style).
    """

    model_config = ConfigDict(frozen=True)

    input: str
    output: str
    testtype: Literal["stdin", "functional"] = "stdin"


class Problem(BaseModel):
    """One benchmark problem.

    Attributes:
        id: Unique within its benchmark.
        problem: The statement, as sent to the model.
        answer: The reference answer (empty for code problems, which are graded by ``tests``).
        domain: ``"math"`` (graded against ``answer``) or ``"code"`` (graded by running ``tests``).
        tests: The tests of a code problem.
        metadata: Everything else the source provides (category, source, contest date, ...).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    problem: str
    answer: str = ""
    domain: Domain = "math"
    tests: list[CodeTest] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# JSONL files


def load_jsonl(path: str | os.PathLike[str], *, domain: Domain | None = None) -> list[Problem]:
    """Load problems from a JSONL file: one JSON object per line.

    Each line needs ``id`` (string or integer), ``problem`` (non-empty string) and ``answer`` (string or
    integer); code problems need a non-empty ``tests`` list of ``{"input", "output", "testtype"}``
    instead of ``answer``. A line's ``domain`` field, else the ``domain`` argument, else ``"code"`` when
    the line has ``tests`` and ``"math"`` otherwise, sets its domain. Other fields, and the fields of a
    ``metadata`` object, go to `Problem.metadata`. Blank lines are skipped.

    Args:
        path: The file.
        domain: The domain of lines that do not name one.

    Returns:
        The problems, in file order.

    Raises:
        DatasetFormatError: A line is not valid JSON, lacks a field, has a field of the wrong type, or
            repeats an id; the message names the file and line.
        FileNotFoundError: There is no such file.
    """
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetFormatError(f"not UTF-8 text ({exc.reason})", path=path, line=number) from exc
            if not text.strip():
                continue
            problem = _parse_line(text, path=path, line=number, domain=domain)
            if problem.id in first_line:
                raise DatasetFormatError(
                    f"duplicate id {problem.id!r} (first on line {first_line[problem.id]})",
                    path=path,
                    line=number,
                )
            first_line[problem.id] = number
            problems.append(problem)
    return problems


def write_jsonl(path: str | os.PathLike[str], problems: Iterable[Problem]) -> Path:
    """Write problems as JSONL that `load_jsonl` reads back unchanged (atomically: all or nothing).

    Args:
        path: The file to create or replace.
        problems: The problems to write.

    Returns:
        The path written.
    """
    target = Path(path)
    lines = (json.dumps(p.model_dump(mode="json"), ensure_ascii=False) + "\n" for p in problems)
    atomic_write_text(target, "".join(lines))
    return target


def _parse_line(text: str, *, path: str | os.PathLike[str], line: int, domain: Domain | None) -> Problem:
    def fail(message: str) -> DatasetFormatError:
        return DatasetFormatError(message, path=path, line=line)

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {type(obj).__name__}")
    line_domain = obj.get("domain", domain)
    if line_domain is None:
        line_domain = "code" if "tests" in obj else "math"
    if line_domain not in ("math", "code"):
        raise fail(f"field 'domain' must be 'math' or 'code', got {line_domain!r}")
    required = ("id", "problem", "tests") if line_domain == "code" else _REQUIRED_FIELDS
    missing = [name for name in required if name not in obj]
    if missing:
        raise fail(f"missing field {missing[0]!r} (each {line_domain} line needs {', '.join(required)})")
    problem_id, answer = obj["id"], obj.get("answer", "")
    if isinstance(problem_id, bool) or not isinstance(problem_id, str | int) or problem_id == "":
        raise fail(f"field 'id' must be a non-empty string or an integer, got {problem_id!r}")
    if not isinstance(obj["problem"], str) or not obj["problem"].strip():
        raise fail("field 'problem' must be a non-empty string")
    if isinstance(answer, bool) or not isinstance(answer, str | int):
        raise fail(f"field 'answer' must be a string or an integer, got {type(answer).__name__}")
    if line_domain == "code" and (not isinstance(obj["tests"], list) or not obj["tests"]):
        raise fail("field 'tests' must be a non-empty list of {input, output, testtype} objects")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise fail("field 'metadata' must be an object")
    try:
        return Problem(
            id=str(problem_id),
            problem=obj["problem"],
            answer=str(answer),
            domain=line_domain,
            tests=obj.get("tests", []),
            metadata={**{k: v for k, v in obj.items() if k not in _CORE_FIELDS}, **metadata},
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise fail(f"field {where!r}: {first['msg']}") from exc


# --------------------------------------------------------------------------------------------------
# Where files live


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing: a temporary file beside it, fsynced, then renamed over it.

    Args:
        path: The file to create or replace (its directory is created when missing).
        text: The content, written as UTF-8.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
