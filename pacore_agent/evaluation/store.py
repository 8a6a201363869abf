"""Append-only, resumable stores for benchmark runs and first-round trajectory pools.

Both stores are JSONL files with one record per line, appended as each piece of work finishes and made
durable before `append` returns (one ``write`` of the whole line on an ``O_APPEND`` descriptor, then
``fsync``). Every record has a key; a key is written at most once, so a rerun asks `done_keys` what to
skip and can never duplicate work. A process killed at any moment (even ``kill -9``) loses at most the
records it had not yet appended: a torn last line is cut off when the store is reopened.

One process writes a store at a time (an exclusive ``flock`` on the file, released when the process
dies); any number may read it with ``readonly=True``.

A run directory holds::

    run_dir/
      results.jsonl   RunStore: one RunRecord per (benchmark, problem id, method, sample)
      config.json     what was run (model, schedule, sampling, ...), checked on resume
      failures.jsonl  FailedItem per item that failed (not in the store, so a rerun retries it)

A pool directory holds ``pool.jsonl`` (PoolStore: one PoolEntry per (problem id, part)) and
``config.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, NamedTuple, Self, TypeVar

import anyio.to_thread
from pydantic import BaseModel, Field, ValidationError

from pacore_agent.evaluation.problems import Domain, atomic_write_text
from pacore_agent.exceptions import PacoreRuntimeError, UsageError
from pacore_agent.results import ErrorInfo, SolveResult, Trajectory, Usage

if sys.platform != "win32":
    import fcntl

__all__ = [
    "FAILURES_FILENAME",
    "FailedItem",
    "PoolEntry",
    "PoolKey",
    "PoolMessage",
    "PoolStore",
    "RunKey",
    "RunRecord",
    "RunStore",
    "StoreError",
    "append_failure",
    "read_config",
    "read_failures",
]

CONFIG_FILENAME = "config.json"
FAILURES_FILENAME = "failures.jsonl"


class StoreError(PacoreRuntimeError):
    """A store file cannot be used: another process is writing it, or a line before the last is corrupt.

    Attributes:
        path: The store file.
        line: The 1-based line at fault, when there is one.
    """

    def __init__(self, message: str, *, path: Path, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


# --------------------------------------------------------------------------------------------------
# Records


class RunKey(NamedTuple):
    """What identifies one finished unit of a benchmark run."""

    benchmark: str
    problem_id: str
    method: str
    sample: int


class RunRecord(BaseModel):
    """One finished (benchmark, problem, method, sample): the full result and its grade.

    Attributes:
        benchmark: The benchmark name, e.g. ``"aime2025"``.
        problem_id: The problem's id within the benchmark.
        method: The method, e.g. ``"pacore[32,4]"``, ``"single"``, ``"sc@16"``.
        sample: The sample index (0-based), for pass@1 averaged over several runs.
        result: The solve's full trace.
        predicted: The answer extracted from the result, as graded.
        correct: The grade (``None`` when not graded).
        score: A graded score in [0, 1], e.g. the pass rate of a code problem's tests.
        info: Grading details (tests passed, grader used, ...).
        error: Why the solve stopped early, when it did but its partial result was still graded (e.g. a
            budget ran out): the record then counts as a graded sample.
        finished_at: Unix time the record was made.
    """

    benchmark: str
    problem_id: str
    method: str
    sample: int = 0
    result: SolveResult
    predicted: str | None = None
    correct: bool | None = None
    score: float | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    finished_at: float = Field(default_factory=time.time)

    @property
    def key(self) -> RunKey:
        """The record's key in its store."""
        return RunKey(self.benchmark, self.problem_id, self.method, self.sample)

    @property
    def grading(self) -> dict[str, Any]:
        """The stored `pacore_agent.evaluation.grading.Grading` as a dict (``{}`` when there is none)."""
        grading = self.info.get("grading") or self.result.info.get("grading") or {}
        return grading if isinstance(grading, dict) else {}


class PoolKey(NamedTuple):
    """What identifies one entry of a trajectory pool."""

    problem_id: str
    part: int


class PoolMessage(BaseModel):
    """One pooled first-round trajectory: its compacted message, grade and cost.

    Attributes:
        message: C(trajectory), the text a synthesis round receives as a reference.
        predicted: The answer extracted from the message, as graded.
        correct: The grade (``None`` when not graded).
        score: A graded score in [0, 1] (pass rate for code).
        usage: The trajectory's tokens.
        finish_reason: ``"stop"``, ``"length"``, ... as reported.
        trajectory: The full trajectory, when the producer chose to keep it (it can be large).
    """

    message: str
    predicted: str | None = None
    correct: bool | None = None
    score: float | None = None
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    trajectory: Trajectory | None = None


class PoolEntry(BaseModel):
    """A problem's pool of first-round messages, or one part of it.

    The training message pool (24 cached messages per problem, of which |M| ~ U(16, 24) are sampled per
    episode) and the benchmark pool (the paper draws the first round from 512 pre-generated
    trajectories per problem) share this format. A large pool may be written in several parts, so that
    a crash loses at most the part in flight; `PoolStore.pools` joins them.

    Attributes:
        problem_id: The problem's id.
        part: Which part of the problem's pool this is (0 when written in one go).
        problem: The problem statement.
        answer: The reference answer.
        domain: ``"math"`` or ``"code"``.
        model: The model that generated the messages.
        messages: The pooled messages.
        metadata: Anything else (sampling settings, dataset, seed, ...).
        created_at: Unix time the entry was made.
    """

    problem_id: str
    part: int = 0
    problem: str
    answer: str = ""
    domain: Domain = "math"
    model: str | None = None
    messages: list[PoolMessage] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)

    @classmethod
    def of(
        cls,
        problem: Any,
        messages: list[PoolMessage],
        *,
        model: str | None,
        metadata: dict[str, Any],
        part: int = 0,
    ) -> PoolEntry:
        """The entry of a problem (a benchmark or a training problem: ``id``, ``problem``, ``answer``, ``domain``)."""
        return cls(
            problem_id=problem.id,
            part=part,
            problem=problem.problem,
            answer=problem.answer,
            domain=problem.domain,
            model=model,
            messages=messages,
            metadata=metadata,
        )

    @property
    def key(self) -> PoolKey:
        """The entry's key in its store."""
        return PoolKey(self.problem_id, self.part)

    @property
    def accuracy(self) -> float | None:
        """The fraction of graded messages that are correct (``None`` when none is graded)."""
        graded = [m.correct for m in self.messages if m.correct is not None]
        return sum(graded) / len(graded) if graded else None

    @property
    def usage(self) -> Usage:
        """Total tokens of the pooled trajectories."""
        return Usage.sum([m.usage for m in self.messages])


# --------------------------------------------------------------------------------------------------
# The shared append-only log

R = TypeVar("R", bound=BaseModel)
K = TypeVar("K", bound=tuple[Any, ...])


class _AppendLog(Generic[R, K]):
    """A JSONL file of records keyed by ``key_fields``; see the module docstring for the guarantees."""

    record_type: ClassVar[type[BaseModel]]
    key_type: ClassVar[Any]
    key_fields: ClassVar[tuple[str, ...]]
    filename: ClassVar[str]

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._keys: set[K] = set()
        self._fd: int | None = None
        if readonly:
            for _, key, _ in self._scan(strict=False):
                self._keys.add(key)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            if sys.platform != "win32":
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreError(
                        "another process is writing this store; wait for it or use another directory",
                        path=self.path,
                    ) from None
            good_end = 0
            for end, key, _ in self._scan(strict=True):
                self._keys.add(key)
                good_end = end
            if good_end < os.fstat(fd).st_size:
                os.ftruncate(fd, good_end)  # a torn last line: the write that was in flight at a crash
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        config: Mapping[str, Any] | None = None,
        readonly: bool = False,
    ) -> Self:
        """Open (or create) the store in a directory, recording what is being run.

        Args:
            directory: The run or pool directory; created if needed (unless ``readonly``).
            config: What is being run (model, schedule, sampling, ...), as JSON-compatible data. Written
                to ``config.json`` on the first open; on later opens it must equal what is there, so a
                resumed run never mixes results of different settings. Ignored when ``readonly``.
            readonly: Open to read only (see the class).

        Raises:
            UsageError: ``config`` differs from the directory's ``config.json``.
            StoreError: Another process is writing the store, or it is corrupt before its last line.
        """
        directory = Path(directory)
        if readonly:
            return cls(directory / cls.filename, readonly=True)
        directory.mkdir(parents=True, exist_ok=True)
        if config is not None:
            _check_or_write_config(directory / CONFIG_FILENAME, config)
        return cls(directory / cls.filename)

    @property
    def config(self) -> dict[str, Any] | None:
        """The ``config.json`` beside the store, when there is one."""
        path = self.path.parent / CONFIG_FILENAME
        return read_config(path) if path.is_file() else None

    def done_keys(self) -> frozenset[K]:
        """The keys already in the store (a snapshot)."""
        with self._lock:
            return frozenset(self._keys)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._keys

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def append_sync(self, record: R) -> bool:
        """Append a record durably (write and fsync) unless its key is already stored.

        Thread-safe. Blocks for the fsync; from async code use `append`.

        Returns:
            ``True`` when the record was written, ``False`` when its key was already there.

        Raises:
            UsageError: The store is closed or read-only, or the record is of the wrong type.
        """
        if not isinstance(record, self.record_type):
            raise UsageError(
                f"{type(self).__name__} stores {self.record_type.__name__}, not {type(record).__name__}"
            )
        key = self._key_of(record)
        line = (record.model_dump_json() + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise UsageError(f"{self.path}: the store is {'read-only' if self.readonly else 'closed'}")
            if key in self._keys:
                return False
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view) :]
                os.fsync(self._fd)
            except OSError:
                # Disk full or the like: leave no partial line for the next append to bury.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, start)
                raise
            self._keys.add(key)
        return True

    async def append(self, record: R) -> bool:
        """Append a record durably unless its key is already stored, without blocking the event loop.

        Safe to call from many tasks at once: writes are serialised and a key is written at most once.
        The write finishes even if the calling task is cancelled meanwhile.

        Returns:
            ``True`` when the record was written, ``False`` when its key was already there.
        """
        return await anyio.to_thread.run_sync(self.append_sync, record)

    def _iter_records(self, *, strict: bool = False) -> Iterator[R]:
        seen: set[K] = set()
        for _, key, record in self._scan(strict=strict):
            if key not in seen:  # only a store written without the lock can repeat a key; first wins
                seen.add(key)
                yield record

    def close(self) -> None:
        """Release the file and its lock. Idempotent."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # closing the descriptor releases the flock
                self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, records={len(self)})"

    # -- internals

    def _key_of(self, record: BaseModel) -> K:
        key: K = self.key_type(*(getattr(record, name) for name in self.key_fields))
        return key

    def _scan(self, *, strict: bool) -> Iterator[tuple[int, K, R]]:
        """Yield (offset after the line, key, record) for each complete, valid line.

        A last line that is unterminated or unparsable is a torn write and is skipped. An invalid line
        before the last raises `StoreError` when ``strict`` (opening to write: appending after it would
        bury it) and is skipped otherwise (readers of a live store).
        """
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            offset, number = 0, 0
            line = f.readline()
            while line:
                number += 1
                following = f.readline()
                end = offset + len(line)
                parsed = self._parse(line) if line.endswith(b"\n") else None
                if parsed is not None:
                    yield end, parsed[0], parsed[1]
                elif following and strict:
                    raise StoreError(
                        f"line {number} is not a valid {self.record_type.__name__}; it is not the last line, "
                        "so it is not a torn write: repair or remove it",
                        path=self.path,
                        line=number,
                    )
                offset, line = end, following

    def _parse(self, line: bytes) -> tuple[K, R] | None:
        try:
            record: R = self.record_type.model_validate_json(line)  # type: ignore[assignment]
        except ValidationError:
            return None
        return self._key_of(record), record


def read_config(path: Path) -> dict[str, Any]:
    """A run's or pool's ``config.json`` (``{}`` when there is none).

    Raises:
        UsageError: The file is not a JSON object.
    """
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise UsageError(f"{path} is not valid JSON ({exc}): repair or remove it") from exc
    if not isinstance(config, dict):
        raise UsageError(f"{path} must hold a JSON object, not {type(config).__name__}: repair or remove it")
    return config


def _check_or_write_config(path: Path, config: Mapping[str, Any]) -> None:
    normal = json.loads(json.dumps(config))  # what a reader will see: tuples become lists, etc.
    if path.is_file():
        existing = read_config(path)
        if "version" in normal and existing.get("version") != normal["version"]:
            raise UsageError(
                f"{path} was written in run format version {existing.get('version')}, and this pacore writes "
                f"version {normal['version']}: start a new run directory, or resume with the pacore that "
                "wrote it"
            )
        if existing != normal:
            changed = sorted(
                k for k in set(existing) | set(normal) if existing.get(k, ...) != normal.get(k, ...)
            )
            raise UsageError(
                f"{path} records a different configuration (differs in: {', '.join(changed)}); resume "
                "with the same settings or start a new run directory"
            )
        return
    atomic_write_text(path, json.dumps(normal, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# The two stores


class RunStore(_AppendLog[RunRecord, RunKey]):
    """The resumable result store of a benchmark run: one `RunRecord` per finished unit of work.

    Example::

        with RunStore.open("runs/aime-pacore", config={"model": model, "method": "pacore[16]"}) as store:
            done = store.done_keys()
            for problem in problems:
                for sample in range(16):
                    if RunKey("aime2025", problem.id, "pacore[16]", sample) not in done:
                        ...  # solve, grade, then: await store.append(RunRecord(...))

    Args:
        path: The JSONL file (``run_dir/results.jsonl`` via `RunStore.open`).
        readonly: Read a store that another process may be writing: no lock, no appends, and a bad line
            is skipped instead of raising.

    Raises:
        StoreError: Another process is writing the store, or a line before the last is corrupt.
    """

    record_type = RunRecord
    key_type = RunKey
    key_fields = ("benchmark", "problem_id", "method", "sample")
    filename = "results.jsonl"

    def records(self, *, strict: bool = False) -> Iterator[RunRecord]:
        """Every stored record, in the order written (read from the file).

        Args:
            strict: Raise `StoreError` for a corrupt line before the last (default: skip it).
        """
        return self._iter_records(strict=strict)


class PoolStore(_AppendLog[PoolEntry, PoolKey]):
    """The resumable store of first-round trajectory pools: one `PoolEntry` per (problem id, part).

    Args:
        path: The JSONL file (``pool_dir/pool.jsonl`` via `PoolStore.open`).
        readonly: Read a store that another process may be writing (see `RunStore`).

    Raises:
        StoreError: Another process is writing the store, or a line before the last is corrupt.
    """

    record_type = PoolEntry
    key_type = PoolKey
    key_fields = ("problem_id", "part")
    filename = "pool.jsonl"

    def entries(self) -> Iterator[PoolEntry]:
        """Every stored entry (part), in the order written (read from the file)."""
        return self._iter_records()

    def pools(self) -> dict[str, PoolEntry]:
        """Each problem's whole pool: its parts joined in part order, as one entry with ``part=0``."""
        parts: dict[str, list[PoolEntry]] = {}
        for entry in self.entries():
            parts.setdefault(entry.problem_id, []).append(entry)
        pools = {}
        for problem_id, entries in parts.items():
            entries.sort(key=lambda e: e.part)
            messages = [m for e in entries for m in e.messages]
            pools[problem_id] = entries[0].model_copy(update={"part": 0, "messages": messages})
        return pools


# --------------------------------------------------------------------------------------------------
# Failures


class FailedItem(BaseModel):
    """An item that failed (kept in ``failures.jsonl``; a rerun tries it again).

    Attributes:
        benchmark: The benchmark.
        problem_id: The problem.
        method: The method label.
        sample: The sample index.
        error: What went wrong.
        partial: What finished before the failure, when there is a partial result.
        finished_at: Unix time of the failure.
    """

    benchmark: str
    problem_id: str
    method: str
    sample: int
    error: ErrorInfo
    partial: SolveResult | None = None
    finished_at: float = Field(default_factory=time.time)

    @property
    def key(self) -> RunKey:
        """The key the item's record would have in the store."""
        return RunKey(self.benchmark, self.problem_id, self.method, self.sample)


def read_failures(directory: str | os.PathLike[str]) -> list[FailedItem]:
    """The failures recorded in a run directory (unreadable lines are skipped)."""
    path = Path(directory) / FAILURES_FILENAME
    if not path.is_file():
        return []
    failures = []
    for line in path.read_bytes().splitlines():
        try:
            failures.append(FailedItem.model_validate_json(line))
        except ValidationError:
            continue
    return failures


def append_failure(directory: str | os.PathLike[str], failed: FailedItem) -> None:
    """Append a failure to ``directory/failures.jsonl`` durably (blocking: call it in a worker thread)."""
    line = (failed.model_dump_json() + "\n").encode("utf-8")
    fd = os.open(Path(directory) / FAILURES_FILENAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
