"""Benchmark runs: every (problem, method, sample) once, graded, appended durably, resumable.

A run directory holds::

    out/
      config.json      what the records mean (model, sampling, seed, protocol, data fingerprint); a rerun
                       with different settings is refused
      results.jsonl    RunStore: one graded RunRecord per (benchmark, problem, method, sample)
      failures.jsonl   items that failed (endpoint errors, ...): not in the store, so a rerun retries them
      pool/            with pool evaluation: the PoolStore of first-round trajectories

Work items go through one backend (one concurrency limiter shared by every method), at most
``max_in_flight`` items at once, ordered sample by sample so that a partial run already covers every
problem and method. Each finished item is graded and appended at once; a killed run loses only the items
in flight. The methods, samples and problems of a rerun may differ (add a method, raise the samples): the
store skips what is done.

Samples are independent: sample ``s`` uses the seed ``derive_seed(seed, "sample", s)`` for the reference
order and (with ``request_seeds``) for the per-request sampling seeds, so a rerun reproduces it on a
server that honours ``seed``. Methods share those seeds within a sample (common random numbers: the first
round of ``pacore:low`` and ``sc@4`` of one sample draw the same trajectories), which makes comparisons
between methods paired, as one pool does for all methods in the paper's protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.to_thread

from pacore_agent.backends.base import Backend, SamplingParams
from pacore_agent.budget import Budget
from pacore_agent.compactors import Compactor, final_conclusion
from pacore_agent.evaluation.bench.methods import MethodSpec
from pacore_agent.evaluation.bench.pool import (
    Pool,
    draw,
    drawn_round,
    load_pools,
    part_widths,
    pool_part,
    pooled_grades,
)
from pacore_agent.evaluation.bench.progress import BenchProgress
from pacore_agent.evaluation.bench.seeds import derive_seed
from pacore_agent.evaluation.datasets import Problem, get_benchmark, load_benchmark, load_jsonl
from pacore_agent.evaluation.grading import (
    DEFAULT_TRUNCATION,
    GraderUnavailableError,
    Grading,
    Truncation,
    grade_result,
    problem_reference,
)
from pacore_agent.evaluation.store import (
    FAILURES_FILENAME,
    FailedItem,
    PoolStore,
    RunKey,
    RunRecord,
    RunStore,
    append_failure,
    read_failures,
)
from pacore_agent.exceptions import BudgetExceeded, PacoreRuntimeError, SolveError, UsageError
from pacore_agent.results import ErrorInfo, SolveResult

__all__ = [
    "FAILURES_FILENAME",
    "BenchSettings",
    "BenchSummary",
    "FailedItem",
    "load_problems",
    "problems_fingerprint",
    "read_failures",
    "run_bench",
]

CONFIG_VERSION = 2
"""The format of a run's ``config.json``; 2 added the compactor, the truncation rule and unset sampling
fields (the paper's 1.0/1.0 by default). A run directory of another version is refused by name."""


@dataclass(frozen=True)
class BenchSettings:
    """What a benchmark run does.

    Attributes:
        benchmark: The benchmark's name (the ``benchmark`` of every record).
        methods: The methods to run.
        samples: Samples per (problem, method): pass@1 is averaged over them (the paper: 64 on AIME/HMMT).
        seed: Base seed; each sample derives its own.
        sampling: Sampling settings (temperature, top_p, max_tokens, ...); ``seed`` is set per sample.
            Default: the paper's evaluation settings, temperature = top_p = 1.0 (`SamplingParams.paper`);
            ``SamplingParams()`` leaves every field to the endpoint.
        request_seeds: Send a derived ``seed`` with every request (repeatable on servers that honour it).
        budget: Limits of each solve; with a pool, the drawn first round is charged as if run.
        order: Reference order policy (a pool's drawn first round too).
        compactor: C, from a trajectory to its message (default `final_conclusion`, what PaCoRe-8B was
            trained with); a pool's drawn trajectories are compacted with it too.
        max_in_flight: Items (solves) in flight at once; requests are bounded by the backend's limiter.
        pool_size: Evaluate with a pool of this many first-round trajectories per problem (the paper:
            512); ``None`` runs every sample fresh.
        pool_chunk: Trajectories per pool part (a part is the unit appended and resumed).
        grade_messages: Grade every round's messages too (emergent correctness needs it).
        truncation: What an answer or message that hit the length limit earns: ``"zero"`` (default; the
            report counts them as ``truncated``) or ``"grade"`` (graded as written, still counted).
        keep_trajectories: Keep the full text of every trajectory in the records; by default only the
            final trajectory keeps its text and the others their message, usage and status.
    """

    benchmark: str
    methods: tuple[MethodSpec, ...]
    samples: int
    seed: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams.paper)
    request_seeds: bool = True
    budget: Budget | None = None
    order: str = "seeded"
    compactor: Compactor = final_conclusion
    max_in_flight: int = 64
    pool_size: int | None = None
    pool_chunk: int = 64
    grade_messages: bool = True
    keep_trajectories: bool = False
    truncation: Truncation = DEFAULT_TRUNCATION

    def __post_init__(self) -> None:
        if not self.methods:
            raise UsageError("give at least one method")
        if len({m.label for m in self.methods}) != len(self.methods):
            raise UsageError("a method is given twice")
        if self.samples < 1:
            raise UsageError(f"samples must be at least 1, got {self.samples}")
        if self.order not in ("seeded", "official", "launch"):
            raise UsageError(f"unknown reference order {self.order!r}: use seeded, official or launch")
        if self.truncation not in ("zero", "grade"):
            raise UsageError(
                f"truncation must be 'zero' or 'grade' for a benchmark, got {self.truncation!r} ('mask' "
                "leaves a sample out, but every sample asked for counts in accuracy)"
            )
        if self.max_in_flight < 1:
            raise UsageError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.pool_size is not None:
            widest = max(self.methods, key=lambda m: m.first_width)
            if self.pool_size < widest.first_width:
                raise UsageError(
                    f"a pool of {self.pool_size} cannot seed {widest.label}, which draws "
                    f"{widest.first_width} first-round trajectories: use --pool-size {widest.first_width} or more"
                )
            if self.pool_chunk < 1:
                raise UsageError(f"pool_chunk must be at least 1, got {self.pool_chunk}")

    @property
    def protocol(self) -> str:
        """``"pool"`` or ``"fresh"``."""
        return "fresh" if self.pool_size is None else "pool"

    def sample_options(self, sample: int) -> dict[str, Any]:
        """`Coordinator` options of one sample: its seed, sampling, budget, reference order and C."""
        seed = derive_seed(self.seed, "sample", sample)
        return {
            "sampling": self.sampling.with_(seed=seed if self.request_seeds else None),
            "seed": seed,
            "budget": self.budget,
            "order": self.order,
            "compactor": self.compactor,
        }

    def _sampling_config(self) -> dict[str, Any]:
        s = self.sampling
        return {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "stop": list(s.stop) if s.stop else None,
            "extra_body": s.extra_body,
        }

    def config(self, *, model: str | None, fingerprint: str) -> dict[str, Any]:
        """What ``config.json`` records: the settings that change what a record means.

        Methods, samples, problems and concurrency are not in it: a rerun may add to them.
        """
        budget = None
        if self.budget is not None:
            limits = {k: v for k, v in vars(self.budget).items() if k != "prices"}
            budget = {**limits, "prices": {k: vars(v) for k, v in self.budget.prices.items()}}
        return {
            **self._generation_config(model=model, fingerprint=fingerprint),
            "order": self.order,
            "compactor": getattr(self.compactor, "__name__", type(self.compactor).__name__),
            "budget": budget,
            "grade_messages": self.grade_messages,
            "truncation": self.truncation,
            "protocol": self.protocol,
            "pool": None if self.pool_size is None else {"size": self.pool_size, "chunk": self.pool_chunk},
        }

    def pool_config(self, *, model: str | None, fingerprint: str) -> dict[str, Any]:
        """What the pool directory's ``config.json`` records."""
        return {
            **self._generation_config(model=model, fingerprint=fingerprint),
            "size": self.pool_size,
            "chunk": self.pool_chunk,
            "truncation": self.truncation,  # the pooled grades are reused under it
        }

    def _generation_config(self, *, model: str | None, fingerprint: str) -> dict[str, Any]:
        """The settings both a run and a pool record: which problems, which model, how sampled."""
        return {
            "version": CONFIG_VERSION,
            "benchmark": self.benchmark,
            "problems_sha256": fingerprint,
            "model": model,
            "seed": self.seed,
            "sampling": self._sampling_config(),
            "request_seeds": self.request_seeds,
        }


@dataclass
class BenchSummary:
    """What one call of `run_bench` did.

    Attributes:
        items: Items asked for (problems x methods x samples).
        skipped: Items already in the store.
        recorded: Items run and appended now.
        failed: Items that failed now (in ``failures.jsonl``; a rerun retries them).
        pool_parts: Pool parts generated now.
        pool_errors: Why each pool part that failed now failed (a rerun retries them).
        wall_s: Seconds the call took.
    """

    items: int = 0
    skipped: int = 0
    recorded: int = 0
    failed: list[FailedItem] = field(default_factory=list)
    pool_parts: int = 0
    pool_errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        """Whether every item asked for is now in the store."""
        return self.skipped + self.recorded == self.items


def problems_fingerprint(problems: Sequence[Problem]) -> str:
    """A hash of the problems' ids, statements, answers and tests: the data a run's records refer to."""
    digest = hashlib.sha256()
    for problem in problems:
        row = [problem.id, problem.problem, problem.answer, [t.model_dump() for t in problem.tests]]
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def load_problems(
    benchmark: str,
    *,
    data: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
) -> tuple[str, list[Problem], str]:
    """The problems of a benchmark run: a named benchmark, or any JSONL file under a name of your choice.

    Args:
        benchmark: A named benchmark (see `pacore_agent.evaluation.datasets.BENCHMARKS`), or, with ``data``, the
            name to record for the file.
        data: A JSONL file (``id``, ``problem``, ``answer``, and ``tests`` for code) to read instead.
        limit: Keep the first ``limit`` problems.
        ids: Keep these problems, in this order.

    Returns:
        The benchmark's canonical name, the selected problems, and the fingerprint of the WHOLE file (so a
        run over a subset may later be widened in the same directory).

    Raises:
        UsageError: Unknown benchmark without ``data``, unknown ids, or a bad limit.
        DatasetUnavailableError: A named benchmark has no local copy and cannot be downloaded.
    """
    try:
        known = get_benchmark(benchmark)
    except UsageError:
        if data is None:
            raise
        name, problems = benchmark, load_jsonl(data)
    else:
        name, problems = known.name, load_benchmark(known.name, data=data)
    fingerprint = problems_fingerprint(problems)
    if ids:
        by_id = {p.id: p for p in problems}
        missing = [i for i in ids if i not in by_id]
        if missing:
            sample = ", ".join(list(by_id)[:5])
            raise UsageError(
                f"unknown problem id(s) {', '.join(missing)} in {name} (ids look like: {sample}, ...)"
            )
        problems = [by_id[i] for i in ids]
    if limit is not None:
        if limit < 1:
            raise UsageError(f"the problem limit must be at least 1, got {limit}")
        problems = problems[:limit]
    return name, problems, fingerprint


class _Item(NamedTuple):
    problem: Problem
    spec: MethodSpec
    sample: int


async def run_bench(
    settings: BenchSettings,
    problems: Sequence[Problem],
    backend: Backend,
    out: str | os.PathLike[str],
    *,
    fingerprint: str | None = None,
    pool_dir: str | os.PathLike[str] | None = None,
    progress: BenchProgress | None = None,
) -> BenchSummary:
    """Run (or resume) a benchmark: every (problem, method, sample) not yet in ``out``'s store.

    Args:
        settings: What to run.
        problems: The problems (ids unique).
        backend: Where every trajectory comes from (its limiter bounds the requests in flight).
        out: The run directory (created if needed).
        fingerprint: The data fingerprint to record (default: `problems_fingerprint` of ``problems``;
            pass the whole benchmark's when running a subset, so a later run may widen it).
        pool_dir: The pool's directory (default ``out/pool``), e.g. to share one pool between runs.
        progress: Live progress (default: none).

    Returns:
        What was done; failed items are listed and a rerun retries them.

    Raises:
        UsageError: Bad problems, or ``out`` holds a run with other settings.
        StoreError: Another process is writing ``out``.
        BackendError: The endpoint cannot tell which model it serves.
    """
    if not problems:
        raise UsageError("no problems to run")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise UsageError("problem ids must be unique within a benchmark")
    runner = _Runner(settings, list(problems), backend, Path(out), progress or BenchProgress(enabled=False))
    return await runner.run(fingerprint or problems_fingerprint(problems), pool_dir)


class _Runner:
    def __init__(
        self,
        settings: BenchSettings,
        problems: list[Problem],
        backend: Backend,
        out: Path,
        progress: BenchProgress,
    ) -> None:
        self.settings = settings
        self.problems = problems
        self.backend = backend
        self.out = out
        self.progress = progress
        self.summary = BenchSummary()
        self.pools: dict[str, Pool] | None = None
        self._fatal: UsageError | GraderUnavailableError | None = None
        self._scope = anyio.CancelScope()

    async def run(self, fingerprint: str, pool_dir: str | os.PathLike[str] | None) -> BenchSummary:
        started = time.perf_counter()
        resolve = getattr(self.backend, "resolve_model", None)
        model = await resolve() if resolve is not None else getattr(self.backend, "model", self.backend.name)
        settings = self.settings
        with RunStore.open(self.out, config=settings.config(model=model, fingerprint=fingerprint)) as store:
            if settings.pool_size is not None:
                directory = Path(pool_dir) if pool_dir is not None else self.out / "pool"
                config = settings.pool_config(model=model, fingerprint=fingerprint)
                with PoolStore.open(directory, config=config) as pool_store:
                    await self._fill_pool(pool_store, model)
                    self.pools = load_pools(pool_store)
            await self._run_items(store)
        self.summary.wall_s = time.perf_counter() - started
        return self.summary

    # -- the pool ----------------------------------------------------------------------------------

    async def _fill_pool(self, store: PoolStore, model: str | None) -> None:
        settings = self.settings
        assert settings.pool_size is not None
        done = store.done_keys()
        widths = part_widths(settings.pool_size, settings.pool_chunk)
        parts = [
            (problem, part, width)
            for part, width in enumerate(widths)
            for problem in self.problems
            if (problem.id, part) not in done
        ]
        if not parts:
            return
        self.progress.start("pool parts", len(parts))

        async def one(problem: Problem, part: int, width: int) -> None:
            seed = derive_seed(settings.seed, "pool", part)
            sampling = settings.sampling.with_(seed=seed if settings.request_seeds else None)
            try:
                entry, round_ = await pool_part(
                    problem,
                    part,
                    width,
                    self.backend,
                    sampling=sampling,
                    seed=seed,
                    model=model,
                    keep_trajectories=settings.keep_trajectories,
                    truncation=settings.truncation,
                )
            except GraderUnavailableError as exc:  # every part would fail alike: stop and say so
                self._fatal = self._fatal or exc
                self._scope.cancel()
                return
            except Exception as exc:  # one part's failure must not stop the others; a rerun retries it
                entry, why = None, f"{type(exc).__name__}: {exc}"
            else:
                self.progress.add_tokens(round_.usage.completion_tokens)
                failed = [t.error.message for t in round_.trajectories if t.error is not None]
                why = failed[0] if failed else "a trajectory did not finish"
            if entry is None:
                self.summary.pool_errors.append(f"{problem.id} part {part}: {why}")
                self.progress.error()
            else:
                await store.append(entry)
                self.summary.pool_parts += 1
            self.progress.advance("pool parts")

        # Parts in flight fill the endpoint's limit and no more: a pooled trajectory's latency (which a
        # pool-evaluated sample's wall time counts) should not include waiting behind other parts.
        fits = max(1, self.backend.max_concurrency // max(widths))
        await self._bounded([(one, part) for part in parts], min(fits, settings.max_in_flight))

    # -- items -------------------------------------------------------------------------------------

    async def _run_items(self, store: RunStore) -> None:
        settings = self.settings
        done = store.done_keys()
        items = [
            _Item(problem, spec, sample)
            for sample in range(settings.samples)
            for problem in self.problems
            for spec in settings.methods
        ]
        pending = [i for i in items if self._key(i) not in done]
        self.summary.items = len(items)
        self.summary.skipped = len(items) - len(pending)
        remaining: dict[str, int] = {}
        for item in pending:
            remaining[item.problem.id] = remaining.get(item.problem.id, 0) + 1
        self.progress.start("items", len(items), completed=self.summary.skipped)
        self.progress.start("problems", len(self.problems), completed=len(self.problems) - len(remaining))
        self.progress.start("trajectories", sum(self._new_trajectories(i.spec) for i in pending))

        async def one(item: _Item) -> None:
            await self._run_item(item, store)
            self.progress.advance("items")
            remaining[item.problem.id] -= 1
            if remaining[item.problem.id] == 0:
                self.progress.advance("problems")

        await self._bounded([(one, (item,)) for item in pending], settings.max_in_flight)

    async def _bounded(self, calls: list[tuple[Any, tuple[Any, ...]]], limit: int) -> None:
        """Run the calls with at most ``limit`` at once, tasks started as slots free up."""
        slots = anyio.Semaphore(limit)

        async def run(function: Any, args: tuple[Any, ...]) -> None:
            try:
                await function(*args)
            finally:
                slots.release()

        async with anyio.create_task_group() as group:
            self._scope = group.cancel_scope
            for function, args in calls:
                await slots.acquire()
                group.start_soon(run, function, args)
        if self._fatal is not None:
            raise self._fatal

    def _key(self, item: _Item) -> RunKey:
        return RunKey(self.settings.benchmark, item.problem.id, item.spec.label, item.sample)

    def _new_trajectories(self, spec: MethodSpec) -> int:
        if self.settings.pool_size is None:
            return spec.trajectories
        return spec.trajectories - spec.first_width if spec.kind == "pacore" else 0

    async def _run_item(self, item: _Item, store: RunStore) -> None:
        try:
            result, grading, error = await self._solve(item)
        except SolveError as exc:
            await self._fail(item, exc, exc.partial)
            return
        except (UsageError, GraderUnavailableError) as exc:  # wrong for every item: stop and say so
            self._fatal = self._fatal or exc
            self._scope.cancel()
            return
        except Exception as exc:  # one item's failure must never lose the others
            await self._fail(item, exc, None)
            return
        new = (
            result.trajectories
            if self.pools is None
            else result.trajectories[len(result.rounds[0].trajectories) :]
        )
        self.progress.advance("trajectories", len(new))
        self.progress.add_tokens(sum(t.usage.completion_tokens for t in new))
        record = RunRecord(
            benchmark=self.settings.benchmark,
            problem_id=item.problem.id,
            method=item.spec.label,
            sample=item.sample,
            result=self._slim(result),
            predicted=grading.predicted,
            correct=grading.correct,
            score=grading.score,
            info={"grading": grading.model_dump(), "protocol": self.settings.protocol},
            error=error,
        )
        await store.append(record)
        self.summary.recorded += 1

    async def _solve(self, item: _Item) -> tuple[SolveResult, Grading, ErrorInfo | None]:
        """One sample through the one solve loop: fresh, or with its first round drawn from the pool."""
        problem, spec = item.problem, item.spec
        first_round, known, drawn = None, None, None
        if self.pools is not None:
            pool = self.pools.get(problem.id)
            size = self.settings.pool_size
            if pool is None or len(pool) != size:
                have = 0 if pool is None else len(pool)
                raise _PoolIncomplete(
                    f"the pool of {problem.id} holds {have} of {size} trajectories (parts failed); rerun to "
                    "complete it"
                )
            indices = draw(pool, spec.first_width, seed=self.settings.seed, sample=item.sample)
            first_round, known = drawn_round(pool, indices), pooled_grades(pool, indices)
            drawn = {"protocol": "pool", "pool": {"size": len(pool), "drawn": indices}}
        options = self.settings.sample_options(item.sample)
        strategy = spec.strategy(self.backend, problem, known=known, **options)
        error: ErrorInfo | None = None
        try:
            result = await strategy.solve(problem.problem, first_round=first_round)
        except BudgetExceeded as exc:  # an outcome of the method under its budget: graded as it stands
            result, error = exc.partial, _error_info(exc)
        except SolveError as exc:
            exc.partial.info.update(drawn or {})
            raise
        result.info.update(drawn or {})
        grading = await grade_result(
            result,
            **problem_reference(problem),
            messages=self.settings.grade_messages,
            attach=False,
            truncation=self.settings.truncation,
            known=known,
        )
        return result, grading, error

    async def _fail(self, item: _Item, exc: Exception, partial: SolveResult | None) -> None:
        failed = FailedItem(
            benchmark=self.settings.benchmark,
            problem_id=item.problem.id,
            method=item.spec.label,
            sample=item.sample,
            error=_error_info(exc),
            partial=self._slim(partial) if partial is not None else None,
        )
        self.summary.failed.append(failed)
        self.progress.error()
        await anyio.to_thread.run_sync(append_failure, self.out, failed)

    def _slim(self, result: SolveResult) -> SolveResult:
        if self.settings.keep_trajectories:
            return result
        for round_ in result.rounds:
            round_.trajectories = [
                t.model_copy(update={"content": None, "reasoning": None}) for t in round_.trajectories
            ]
        return result


class _PoolIncomplete(PacoreRuntimeError):
    """A problem's pool lacks trajectories (some parts failed)."""


def _error_info(exc: BaseException) -> ErrorInfo:
    message, status = str(exc), getattr(exc, "status_code", None)
    if isinstance(exc, SolveError):  # the endpoint's own error, from the partial trace
        first = next((t.error for t in exc.partial.trajectories if t.error is not None), None)
        if first is not None:
            status = first.status_code
            if first.message not in message:
                message = f"{message}; first error: {first.message}"
    return ErrorInfo(type=type(exc).__name__, message=message, status_code=status)
