"""The message pool: N first-round messages per training problem, graded, in the `PoolStore` format.

For each problem, `build_pool` runs ONE first round of N trajectories (default 24) through
`Coordinator.run_round`, the very code path `solve` uses (same prompt, backend limiter, retries and
compactor C), so a pool built with any backend (SGLang, an OpenAI-compatible endpoint, the in-process
transformers model, the simulated server) holds exactly the messages inference would pass on. Each
message is graded by the library's one message grader (`pacore_agent.evaluation.grading.agrade_message`:
binary for math, the pass rate of the problem's tests in the sandbox for code; a message whose trajectory
hit the length limit earns 0 by default, and one the grader could not grade has ``correct=None``) and the entry (problem, messages, correctness, usage) is appended durably to a
`PoolStore` as soon as its problem is done.

Problems already in the store are skipped, so a killed run, rerun with the same arguments, loses at most
the problems that were in flight. Problems run concurrently, at most `PoolConfig.max_concurrent_problems`
at a time; requests of every problem share the backend's own limiter.

A problem that ships cached responses (PaCoRe-Train-8k) can take its pool from them instead
(`PoolConfig.use_cached`): C is applied to each cached response and it is graded the same way.

Entry layout (`pacore_agent.evaluation.store.PoolEntry`): ``problem`` is the statement, ``answer`` the reference
answer (empty for code), ``domain``, ``model``, ``messages`` (one `PoolMessage` per finished trajectory,
in the round's reference order), and ``metadata`` with ``source`` (``"generated"`` or ``"cached"``),
``launched``/``failed`` trajectory counts, ``tests`` (code problems: the tests, so an entry is
self-contained), ``conversation`` (when the problem is a multi-message conversation) and the problem's own
metadata under ``problem_metadata``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import anyio.to_thread

from pacore_agent.compactors import Compactor, apply_compactor, final_conclusion
from pacore_agent.coordinator import Coordinator
from pacore_agent.evaluation.datasets import CodeTest
from pacore_agent.evaluation.grading import DEFAULT_TRUNCATION, Truncation, grade_pool_message
from pacore_agent.evaluation.sandbox import SandboxConfig
from pacore_agent.evaluation.store import PoolEntry, PoolKey, PoolMessage, PoolStore
from pacore_agent.exceptions import PacoreRuntimeError, UsageError
from pacore_agent.results import RoundResult, Usage
from training.data import TrainProblem, arithmetic_problems, load_training_problems

__all__ = [
    "DEFAULT_POOL_SIZE",
    "PoolConfig",
    "PoolReport",
    "PoolSettings",
    "build_pool",
    "entry_problem",
    "load_or_build_pool",
    "load_pool_entries",
    "pool_accuracy",
    "pool_summary",
    "write_pool_entries",
]

logger = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 24
"""Messages cached per problem in the paper's training pool."""

DEFAULT_MAX_CONCURRENT_PROBLEMS = 8
"""Problems whose rounds run at once when the caller sets no limit."""


@dataclass(frozen=True)
class PoolConfig:
    """How a message pool is built.

    Attributes:
        size: Trajectories per problem (N; the paper caches 24).
        max_concurrent_problems: Problems in flight at once (their requests also share the backend's
            own concurrency limit).
        use_cached: Take a problem's pool from its cached ``responses`` when it has at least ``size``
            of them (the first ``size``), instead of generating.
        keep_trajectories: Store each full trajectory (reasoning included) beside its message.
        sandbox: Sandbox limits for grading code messages (default `SandboxConfig()`).
        math_timeout: Seconds math-verify may spend on one comparison.
        truncation: What a message whose trajectory hit the length limit earns (see
            `pacore_agent.evaluation.grading`): ``"zero"`` (default), ``"mask"`` or ``"grade"``.
    """

    size: int = DEFAULT_POOL_SIZE
    max_concurrent_problems: int = DEFAULT_MAX_CONCURRENT_PROBLEMS
    use_cached: bool = True
    keep_trajectories: bool = False
    sandbox: SandboxConfig | None = None
    math_timeout: float = 5.0
    truncation: Truncation = DEFAULT_TRUNCATION

    def __post_init__(self) -> None:
        if self.size < 1:
            raise UsageError(f"pool size must be at least 1, got {self.size}")
        if self.max_concurrent_problems < 1:
            raise UsageError(
                f"max_concurrent_problems must be at least 1, got {self.max_concurrent_problems}"
            )


@dataclass
class PoolReport:
    """What one `build_pool` call did.

    Attributes:
        built: Ids of the problems whose entry was written by this call.
        skipped: Ids already in the store (from an earlier run).
        failed: Ids whose round produced no message or raised, with the reason; they are not stored,
            so a rerun tries them again.
        usage: Tokens spent by this call.
    """

    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)


# --------------------------------------------------------------------------------------------------
# Grading


def pool_accuracy(entry: PoolEntry) -> float | None:
    """Mean message score of a pool (fraction correct for math, mean pass rate for code).

    Messages without a score count by their ``correct`` flag. None when nothing is graded.
    """
    scores = [
        m.score if m.score is not None else (1.0 if m.correct else 0.0)
        for m in entry.messages
        if m.score is not None or m.correct is not None
    ]
    return sum(scores) / len(scores) if scores else None


# --------------------------------------------------------------------------------------------------
# Entries <-> problems


def entry_problem(entry: PoolEntry) -> TrainProblem:
    """The problem a pool entry was built for (statement, answer, domain, tests, conversation).

    Raises:
        UsageError: The entry's ``metadata["tests"]`` are malformed.
    """
    metadata = entry.metadata
    try:
        tests = [CodeTest.model_validate(t) for t in metadata.get("tests") or []]
    except ValueError as exc:
        raise UsageError(f"pool entry {entry.problem_id!r}: malformed metadata['tests']: {exc}") from exc
    return TrainProblem(
        id=entry.problem_id,
        problem=entry.problem,
        answer=entry.answer,
        domain=entry.domain,
        tests=tests,
        metadata=dict(metadata.get("problem_metadata") or {}),
        conversation=list(metadata.get("conversation") or []),
    )


def _entry(
    problem: TrainProblem,
    messages: list[PoolMessage],
    *,
    model: str | None,
    source: str,
    launched: int,
    failed: int,
) -> PoolEntry:
    metadata: dict[str, Any] = {"source": source, "launched": launched, "failed": failed}
    if problem.tests:
        metadata["tests"] = [t.model_dump() for t in problem.tests]
    if problem.conversation:
        metadata["conversation"] = problem.conversation
    if problem.metadata:
        metadata["problem_metadata"] = problem.metadata
    return PoolEntry.of(problem, messages, model=model, metadata=metadata)


def load_pool_entries(path: str | os.PathLike[str]) -> list[PoolEntry]:
    """Pool entries from a pool directory (``pool.jsonl`` inside) or a JSONL file of entries.

    A directory is read as a `PoolStore` (parts joined per problem); a file holds one `PoolEntry` per
    line (what `write_pool_entries` and the curriculum filters write).

    Raises:
        UsageError: A line is not a valid entry (the message names file and line), or an id repeats.
        FileNotFoundError: Nothing at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        store = PoolStore.open(path, readonly=True)
        return list(store.pools().values())
    entries: list[PoolEntry] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = PoolEntry.model_validate_json(line)
            except ValueError as exc:
                raise UsageError(f"{path}:{number}: not a valid pool entry: {exc}") from exc
            if entry.problem_id in seen:
                raise UsageError(f"{path}:{number}: duplicate problem id {entry.problem_id!r}")
            seen.add(entry.problem_id)
            entries.append(entry)
    return entries


def write_pool_entries(path: str | os.PathLike[str], entries: Iterable[PoolEntry]) -> Path:
    """Write entries as JSONL (atomically: the file is replaced whole), readable by `load_pool_entries`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with partial.open("w", encoding="utf-8") as handle:
        for entry in entries:
            handle.write(entry.model_dump_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(target)
    return target


# --------------------------------------------------------------------------------------------------
# Building


async def _graded(
    texts: Sequence[tuple[str, str | None, Usage, Any]],
    problem: TrainProblem,
    config: PoolConfig,
) -> list[PoolMessage]:
    """(message, finish_reason, usage, trajectory) per finished trajectory -> graded pool messages."""
    return [
        await grade_pool_message(
            message,
            problem,
            finish_reason=finish_reason,
            usage=usage,
            trajectory=trajectory if config.keep_trajectories else None,
            truncation=config.truncation,
            sandbox=config.sandbox,
            math_timeout=config.math_timeout,
        )
        for message, finish_reason, usage, trajectory in texts
    ]


async def _from_round(
    problem: TrainProblem, coordinator: Coordinator, config: PoolConfig
) -> tuple[PoolEntry | None, Usage, str | None]:
    outcome: RoundResult = await coordinator.run_round(problem.messages, config.size)
    by_index = {t.index: t for t in outcome.trajectories}
    finished = [by_index[i] for i in outcome.order]  # reference order
    texts = [(t.message or "", t.finish_reason, t.usage, t) for t in finished]
    failed = sum(1 for t in outcome.trajectories if not t.ok)
    if not texts:
        errors = [t.error.message for t in outcome.trajectories if t.error is not None]
        reason = f"no trajectory finished ({failed} failed)" + (
            f"; first error: {errors[0]}" if errors else ""
        )
        return None, outcome.usage, reason
    messages = await _graded(texts, problem, config)
    models = {t.model for t in finished if t.model}
    model = models.pop() if len(models) == 1 else coordinator.backend.name
    entry = _entry(
        problem, messages, model=model, source="generated", launched=len(outcome.trajectories), failed=failed
    )
    return entry, outcome.usage, None


async def _from_cache(problem: TrainProblem, config: PoolConfig, compactor: Compactor) -> PoolEntry:
    texts = []
    for response in problem.responses[: config.size]:
        texts.append((await apply_compactor(compactor, response), None, Usage(), None))
    messages = await _graded(texts, problem, config)
    return _entry(problem, messages, model=None, source="cached", launched=len(texts), failed=0)


async def build_pool(
    problems: Iterable[TrainProblem],
    coordinator: Coordinator | None,
    store: PoolStore,
    *,
    config: PoolConfig | None = None,
    on_entry: Callable[[PoolEntry], None] | None = None,
) -> PoolReport:
    """Build (or resume) the message pool of ``problems`` into ``store``.

    Args:
        problems: The training problems (ids must be unique).
        coordinator: Runs the first rounds (its backend, sampling, compactor and retry policy apply);
            may be None only when every problem takes its pool from cached responses.
        store: Where entries go (part 0 per problem); problems already in it are skipped.
        config: Pool settings.
        on_entry: Called with each entry once it is stored (progress display).

    Returns:
        What was built, skipped and failed, and the tokens spent.

    Raises:
        UsageError: Repeated problem ids; a problem without an answer (math) or tests (code); no
            coordinator while some problem needs generating.
    """
    config = config or PoolConfig()
    pending: list[TrainProblem] = []
    report = PoolReport()
    seen: set[str] = set()
    for problem in problems:
        if problem.id in seen:
            raise UsageError(f"problem id {problem.id!r} appears twice: pool entries are keyed by id")
        seen.add(problem.id)
        if problem.domain == "code" and not problem.tests:
            raise UsageError(f"code problem {problem.id!r} has no tests: its messages cannot be graded")
        if problem.domain == "math" and not problem.answer.strip():
            raise UsageError(f"math problem {problem.id!r} has no answer: its messages cannot be graded")
        if PoolKey(problem.id, 0) in store:
            report.skipped.append(problem.id)
        else:
            pending.append(problem)
    cached = config.use_cached
    if coordinator is None and any(not (cached and len(p.responses) >= config.size) for p in pending):
        raise UsageError(
            "a coordinator is needed: some problems have fewer cached responses than the pool size"
        )
    compactor: Compactor = coordinator.compactor if coordinator is not None else final_conclusion
    limiter = anyio.CapacityLimiter(config.max_concurrent_problems)

    async def one(problem: TrainProblem) -> None:
        async with limiter:
            try:
                if cached and len(problem.responses) >= config.size:
                    entry: PoolEntry | None = await _from_cache(problem, config, compactor)
                    usage, reason = Usage(), None
                else:
                    assert coordinator is not None
                    entry, usage, reason = await _from_round(problem, coordinator, config)
            except PacoreRuntimeError as error:
                report.failed[problem.id] = f"{type(error).__name__}: {error}"
                logger.warning("pool: problem %s failed: %s", problem.id, error)
                return
        report.usage = report.usage + usage
        if entry is None:
            report.failed[problem.id] = reason or "no message"
            return
        if await store.append(entry):
            report.built.append(problem.id)
            if on_entry is not None:
                on_entry(entry)

    async with anyio.create_task_group() as group:
        for problem in pending:
            group.start_soon(one, problem)
    return report


# --------------------------------------------------------------------------------------------------
# The training driver's pool: read, or built from problem files


class PoolSettings(Protocol):
    """The run settings `load_or_build_pool` reads (`training.train.TrainConfig` has them)."""

    @property
    def model(self) -> str:
        """``--model``."""

    @property
    def pool(self) -> str | None:
        """``--pool``."""

    @property
    def problems(self) -> tuple[str, ...]:
        """``--problems``."""

    @property
    def arithmetic(self) -> int:
        """``--arithmetic``."""

    @property
    def build_pool(self) -> Literal["cached", "sim", "transformers", "openai"]:
        """``--build-pool``."""

    @property
    def pool_size(self) -> int:
        """``--pool-size``."""

    @property
    def pool_base_url(self) -> str | None:
        """``--pool-base-url``."""

    @property
    def pool_model(self) -> str | None:
        """``--pool-model``."""

    @property
    def pool_max_tokens(self) -> int | None:
        """``--pool-max-tokens``."""

    @property
    def max_response_tokens(self) -> int:
        """``--max-response-tokens``."""

    @property
    def min_messages(self) -> int:
        """``--min-messages``."""

    @property
    def seed(self) -> int:
        """``--seed``."""


def load_or_build_pool(config: PoolSettings, out: Path) -> list[PoolEntry]:
    """The pool entries to train on, sorted by problem id: ``--pool`` read, or built into ``OUT/pool``.

    A built pool comes from ``config.build_pool`` (cached responses, the SIMULATED backend, the policy
    in-process, or an OpenAI-compatible endpoint) through `build_pool`, and a rerun resumes it. Problems
    with fewer than ``config.min_messages`` messages are left out with a warning.

    Raises:
        UsageError: No problem has enough messages.
    """
    if config.pool:
        entries = load_pool_entries(config.pool)
    else:
        problems: list[TrainProblem] = []
        for path in config.problems:
            problems.extend(load_training_problems(path))
        problems.extend(arithmetic_problems(config.arithmetic, seed=config.seed))
        entries = anyio.run(_build_pool, config, problems, out / "pool")
    usable = [e for e in entries if len(e.messages) >= config.min_messages]
    if len(usable) < len(entries):
        short = sorted(e.problem_id for e in entries if len(e.messages) < config.min_messages)
        print(
            f"warning: {len(short)} problems have fewer than {config.min_messages} messages and are left "
            f"out: {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}",
            file=sys.stderr,
        )
    if not usable:
        raise UsageError(f"no problem in the pool has at least --min-messages {config.min_messages} messages")
    return sorted(usable, key=lambda e: e.problem_id)


async def _build_pool(config: PoolSettings, problems: list[TrainProblem], directory: Path) -> list[PoolEntry]:
    from pacore_agent.backends.base import Backend, SamplingParams

    max_tokens = config.pool_max_tokens or config.max_response_tokens
    store_config = {"backend": config.build_pool, "size": config.pool_size, "max_tokens": max_tokens}
    pool_config = PoolConfig(size=config.pool_size, use_cached=True)
    with PoolStore.open(directory, config=store_config) as store:
        if config.build_pool == "cached":
            report = await build_pool(problems, None, store, config=pool_config)
        else:
            backend: Backend
            if config.build_pool == "sim":
                from pacore_agent.backends.sim import SIM_LABEL, SimBackend, SimConfig

                print(f"building the pool with the SIMULATED backend {SIM_LABEL}", file=sys.stderr)
                backend = SimBackend(
                    SimConfig(seed=config.seed, answers={p.problem: p.answer for p in problems})
                )
            elif config.build_pool == "transformers":
                from pacore_agent.backends.transformers import TransformersBackend

                backend = TransformersBackend(config.model, max_new_tokens=max_tokens)
            else:
                from pacore_agent.backends.openai_compat import OpenAIBackend

                api_key = os.environ.get("PACORE_API_KEY") or os.environ.get("OPENAI_API_KEY")
                backend = OpenAIBackend(config.pool_base_url or "", config.pool_model, api_key=api_key)
            sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=max_tokens, seed=config.seed)
            async with backend:
                coordinator = Coordinator("low", backend, sampling=sampling, seed=config.seed)
                report = await build_pool(problems, coordinator, store, config=pool_config)
    if report.failed:
        failed = sorted(report.failed)
        print(
            f"warning: the pool of {len(failed)} problems failed (a rerun retries): {failed[:5]}",
            file=sys.stderr,
        )
    wanted = {p.id for p in problems}
    return [e for pid, e in PoolStore.open(directory, readonly=True).pools().items() if pid in wanted]


def pool_summary(entries: Iterable[PoolEntry]) -> dict[str, Any]:
    """Counts and mean accuracy per domain of a pool (for logs and reports)."""
    summary: dict[str, Any] = {}
    for entry in entries:
        domain = summary.setdefault(entry.domain, {"problems": 0, "messages": 0, "accuracy_sum": 0.0})
        domain["problems"] += 1
        domain["messages"] += len(entry.messages)
        domain["accuracy_sum"] += pool_accuracy(entry) or 0.0
    for domain in summary.values():
        domain["mean_accuracy"] = (
            domain.pop("accuracy_sum") / domain["problems"] if domain["problems"] else 0.0
        )
    return summary
