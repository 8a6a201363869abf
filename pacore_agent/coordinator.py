"""The Coordinator: schedule -> rounds -> `SolveResult`.

Round r launches K_r trajectories on P(x, M_{r-1}) in one task group; every request holds one slot of
the backend's limiter (shared by every problem in flight) and retries outside it. Finished
trajectories are compacted to messages; failed ones are recorded and left out. A final round of one
trajectory gives the answer, C(final trajectory). This is the one way pacore runs a round: the CLI, the
server, the benchmarks and training all come through here.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio

from pacore_agent.backends.base import Backend, Completion, GenerationRequest, SamplingParams
from pacore_agent.compactors import Compactor, apply_compactor, final_conclusion
from pacore_agent.exceptions import BackendError, PacoreError, RoundFailedError, SolveError, UsageError
from pacore_agent.ordering import OrderPolicy, reference_order, round_rng
from pacore_agent.prompts import Messages, SynthesisTemplate, build_prompt, normalize_problem
from pacore_agent.results import (
    Done,
    ErrorInfo,
    Event,
    RoundFinished,
    RoundResult,
    RoundStarted,
    SolveResult,
    TokenDelta,
    Trajectory,
    TrajectoryFinished,
    Usage,
)
from pacore_agent.retry import RetryPolicy, call_with_retries
from pacore_agent.schedule import DEFAULT_MAX_WIDTH, Schedule, ScheduleLike

__all__ = ["Coordinator", "Problem"]

Problem = str | Sequence[dict[str, Any]]
"""A problem: its text, or an OpenAI-style list of chat messages."""

Emit = Callable[[Event], Awaitable[None]]
TokenStreaming = Literal["final", "all", "none"]


def problem_key(messages: Messages) -> str:
    """A stable identity of a conversation, for seeding."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _derived_seed(base: int, *parts: object) -> int:
    digest = hashlib.sha256("|".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass
class _RoundState:
    """What one round has gathered so far."""

    trajectories: list[Trajectory | None]
    target: int
    successes: int = 0
    reached: bool = False
    finished: list[int] = field(default_factory=list)
    partial: dict[int, list[str]] = field(default_factory=dict)
    partial_reasoning: dict[int, list[str]] = field(default_factory=dict)


class Coordinator:
    """Runs PaCoRe: rounds of parallel trajectories, compacted and synthesized.

    Example::

        async with Coordinator(schedule=[32, 4], backend=OpenAIBackend(url)) as pacore:
            result = await pacore.solve("How many primes are below 100?")
            print(result.answer)

    Args:
        schedule: The K vector (e.g. ``[32, 4]``) or a preset: ``"low"`` = [4], ``"medium"`` = [16],
            ``"high"`` = [32, 4]. A final round of one trajectory always follows.
        backend: Where trajectories come from. Default: an `OpenAIBackend` built from the environment
            (``PACORE_BASE_URL`` / ``OPENAI_BASE_URL``, ``PACORE_API_KEY`` / ``OPENAI_API_KEY``,
            ``PACORE_MODEL``); the coordinator then owns and closes it.
        compactor: C, from a trajectory's text to its message (default `final_conclusion`).
        template: Override of the synthesis template (Jinja2 source or a callable).
        sampling: Sampling settings of every request (default temperature = top_p = 1.0).
        seed: Seed of the reference order and, when ``sampling.seed`` is set, of per-request seeds.
        order: Reference order policy (see `pacore_agent.ordering`).
        retry: Retry policy (see `pacore_agent.retry.RetryPolicy`).
        max_width: Safety cap on trajectories per round.
        n_per_request: Trajectories asked for per request with ``n`` (1 = one request each, as the
            official pipeline). Servers that ignore ``n`` are detected.
        min_success: Start the next round once this many trajectories of a round have finished: a
            count, or a fraction of the round's width (``0.75``). Default: wait for all.
        round_timeout: Seconds after which a round stops waiting and goes on with what finished.
        hedge: Extra trajectories launched per round (a count, or a fraction of the width); the first
            K to finish are kept and the rest cancelled.
        stream_tokens: Which rounds emit `TokenDelta` events in `stream` (``"final"`` by default).
        clock: Monotonic clock (injected in tests).
    """

    def __init__(
        self,
        schedule: ScheduleLike = "low",
        backend: Backend | None = None,
        *,
        compactor: Compactor = final_conclusion,
        template: SynthesisTemplate | None = None,
        sampling: SamplingParams | None = None,
        seed: int = 0,
        order: OrderPolicy = "seeded",
        retry: RetryPolicy | None = None,
        max_width: int = DEFAULT_MAX_WIDTH,
        n_per_request: int = 1,
        min_success: int | float | None = None,
        round_timeout: float | None = None,
        hedge: int | float = 0,
        stream_tokens: TokenStreaming = "final",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.schedule = Schedule.parse(schedule, max_width=max_width)
        if n_per_request < 1:
            raise UsageError(f"n_per_request must be at least 1, got {n_per_request}")
        if isinstance(order, str) and order not in ("seeded", "official", "launch"):
            raise UsageError(
                f"unknown reference order {order!r}: use 'seeded', 'official', 'launch' or a callable"
            )
        if stream_tokens not in ("final", "all", "none"):
            raise UsageError(f"stream_tokens must be 'final', 'all' or 'none', got {stream_tokens!r}")
        _check_min_success(min_success, self.schedule)
        if round_timeout is not None and not round_timeout > 0:
            raise UsageError(f"round_timeout must be a positive number of seconds, got {round_timeout}")
        if isinstance(hedge, bool) or not isinstance(hedge, int | float) or hedge < 0:
            raise UsageError(f"hedge must be a count or fraction >= 0 of extra trajectories, got {hedge!r}")
        self._owns_backend = backend is None
        if backend is None:
            from pacore_agent.backends.env import backend_from_env

            backend = backend_from_env()
        self.backend = backend
        self.compactor = compactor
        self.template = template
        self.sampling = sampling or SamplingParams()
        self.seed = seed
        self.order = order
        self.retry = retry or RetryPolicy()
        self.n_per_request = n_per_request
        self.min_success = min_success
        self.round_timeout = round_timeout
        self.hedge = hedge
        self.stream_tokens = stream_tokens
        self.clock = clock

    # -- public API --------------------------------------------------------------------------------

    @property
    def rounds(self) -> list[int]:
        """The widths actually run, final round included: ``[32, 4, 1]`` for ``[32, 4]``."""
        return list(self.schedule.rounds)

    @property
    def method(self) -> str:
        """A label for traces and reports, e.g. ``"pacore[32,4]"`` or ``"pacore-low"``."""
        return f"pacore-{self.schedule.name}" if self.schedule.name else f"pacore{self.schedule}"

    def __repr__(self) -> str:
        return f"Coordinator(schedule={self.schedule}, backend={self.backend!r}, seed={self.seed})"

    async def solve(self, problem: Problem) -> SolveResult:
        """Solve one problem.

        Args:
            problem: The problem text, or chat messages (the last user message holds the problem;
                earlier turns are kept as history in every round).

        Returns:
            The answer with the whole trace.

        Raises:
            UsageError: The problem is empty or has no user turn.
            RoundFailedError: Every trajectory of a round failed; ``.partial`` holds what finished.
        """
        return await self._solve(normalize_problem(problem), emit=None)

    async def stream(self, problem: Problem) -> AsyncIterator[Event]:
        """Solve one problem, yielding live events; the last one is `Done` with the result.

        Events: `RoundStarted`, `TrajectoryFinished`, `TokenDelta` (streaming backends; final round by
        default), `RoundFinished`, `Done`. `solve` runs the same path without listening.
        """
        messages = normalize_problem(problem)
        send, receive = anyio.create_memory_object_stream[Event | BaseException](max_buffer_size=math.inf)

        async def produce() -> None:
            async with send:
                try:
                    await self._solve(messages, emit=send.send)
                except PacoreError as error:
                    await send.send(error)

        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            async with receive:
                async for item in receive:
                    if isinstance(item, BaseException):
                        raise item
                    yield item

    async def solve_many(
        self, problems: Sequence[Problem], *, max_in_flight: int | None = None
    ) -> list[SolveResult | SolveError]:
        """Solve many problems concurrently through the same backend limiter.

        A problem whose solve fails gets its `SolveError` (with ``.partial``) in its slot; the others
        are unaffected.

        Args:
            problems: The problems.
            max_in_flight: Problems solved at once (default: all; the backend's limiter bounds the
                requests anyway).
        """
        results: list[SolveResult | SolveError | None] = [None] * len(problems)
        async for index, result in self.solve_iter(problems, max_in_flight=max_in_flight):
            results[index] = result
        return [r for r in results if r is not None]

    async def solve_iter(
        self, problems: Sequence[Problem], *, max_in_flight: int | None = None
    ) -> AsyncIterator[tuple[int, SolveResult | SolveError]]:
        """Like `solve_many`, yielding ``(index, result)`` as each problem finishes."""
        conversations = [normalize_problem(p) for p in problems]  # bad input fails before any request
        if max_in_flight is not None and max_in_flight < 1:
            raise UsageError(f"max_in_flight must be at least 1, got {max_in_flight}")
        gate = anyio.CapacityLimiter(max_in_flight or max(len(conversations), 1))
        send, receive = anyio.create_memory_object_stream[tuple[int, SolveResult | SolveError]](math.inf)

        async def one(index: int, messages: Messages) -> None:
            async with gate:
                try:
                    result: SolveResult | SolveError = await self._solve(messages, emit=None)
                except SolveError as error:
                    result = error
            await send.send((index, result))

        async with anyio.create_task_group() as group, send:
            for index, messages in enumerate(conversations):
                group.start_soon(one, index, messages)
            async with receive:
                remaining = len(conversations)
                while remaining:
                    yield await receive.receive()
                    remaining -= 1

    async def aclose(self) -> None:
        """Close the backend if the coordinator created it."""
        if self._owns_backend:
            await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the one path ------------------------------------------------------------------------------

    async def _solve(self, messages: Messages, emit: Emit | None) -> SolveResult:
        key = problem_key(messages)
        result = SolveResult(
            method=self.method,
            problem=messages,
            schedule=self.rounds,
            order_policy=self.order
            if isinstance(self.order, str)
            else getattr(self.order, "__name__", "custom"),
            seed=self.seed,
            started_at=time.time(),
        )
        start = self.clock()
        references: list[str] = []
        for round_index, width in enumerate(self.rounds):
            prompt = build_prompt(messages, references, self.template)
            final = round_index == len(self.rounds) - 1
            if emit is not None:
                await emit(RoundStarted(round=round_index, width=width, model=self.backend.name))
            outcome = await self._run_round(key, round_index, width, prompt, emit, final=final)
            result.rounds.append(outcome)
            result.wall_s = self.clock() - start
            if emit is not None:
                await emit(RoundFinished(result=outcome))
            if final:
                finished = [t for t in outcome.trajectories if t.ok]
                if not finished:
                    raise RoundFailedError(_failure_message(outcome, final=True), partial=result)
                result.final = finished[0]
                result.answer = final_conclusion(finished[0].text)
            elif not outcome.messages:
                raise RoundFailedError(_failure_message(outcome, final=False), partial=result)
            references = outcome.messages
        result.wall_s = self.clock() - start
        if emit is not None:
            await emit(Done(result=result))
        return result

    def _target(self, width: int) -> int:
        if self.min_success is None:
            return width
        if isinstance(self.min_success, float) and self.min_success <= 1.0:
            return max(1, math.ceil(self.min_success * width))
        return min(int(self.min_success), width)

    def _extra(self, width: int) -> int:
        if isinstance(self.hedge, float) and self.hedge < 1.0:
            return math.ceil(self.hedge * width) if self.hedge > 0 else 0
        return int(self.hedge)

    async def _run_round(
        self, key: str, round_index: int, width: int, prompt: Messages, emit: Emit | None, *, final: bool
    ) -> RoundResult:
        launched = width + self._extra(width)
        state = _RoundState(trajectories=[None] * launched, target=min(self._target(width), width))
        cuts = self.min_success is not None or self.round_timeout is not None or launched > width
        tokens = emit is not None and (
            self.stream_tokens == "all" or (self.stream_tokens == "final" and final)
        )
        start = self.clock()
        groups = [
            (first, min(self.n_per_request, launched - first))
            for first in range(0, launched, self.n_per_request)
        ]
        with anyio.move_on_after(self.round_timeout) as deadline:
            async with anyio.create_task_group() as group:
                for call_index, (first, count) in enumerate(groups):
                    group.start_soon(
                        self._call,
                        key,
                        round_index,
                        call_index,
                        first,
                        count,
                        prompt,
                        state,
                        group.cancel_scope,
                        emit,
                        tokens,
                        cuts or tokens,
                    )
        trajectories = [t for t in state.trajectories if t is not None]
        if emit is not None:
            for trajectory in trajectories:
                if trajectory.status == "cancelled":
                    await emit(TrajectoryFinished(trajectory=trajectory))
        stop_reason = (
            "deadline" if deadline.cancelled_caught else "quorum" if state.reached and cuts else "complete"
        )
        kept = _keep_first(state, width) if launched > width else trajectories
        order = reference_order(self.order, kept, round_rng(self.seed, key, round_index))
        return RoundResult(
            index=round_index,
            width=width,
            trajectories=trajectories,
            order=[kept[i].index for i in order],
            messages=[kept[i].message or "" for i in order],
            wall_s=self.clock() - start,
            stop_reason=stop_reason,
        )

    async def _call(
        self,
        key: str,
        round_index: int,
        call_index: int,
        first: int,
        count: int,
        prompt: Messages,
        state: _RoundState,
        scope: anyio.CancelScope,
        emit: Emit | None,
        tokens: bool,
        collect: bool,
    ) -> None:
        sampling = self.sampling
        if sampling.seed is not None:
            sampling = sampling.with_(seed=_derived_seed(sampling.seed, key, round_index, call_index))
        request = GenerationRequest(messages=prompt, n=count, sampling=sampling)
        started = self.clock()

        async def on_delta(choice: int, field_name: Literal["content", "reasoning"], text: str) -> None:
            index = first + choice
            buffers = state.partial if field_name == "content" else state.partial_reasoning
            buffers.setdefault(index, []).append(text)
            if tokens and emit is not None:
                await emit(TokenDelta(round=round_index, index=index, field=field_name, text=text))

        base = {"round": round_index, "call": call_index, "model": self.backend.name}
        try:
            call = await call_with_retries(
                self.backend, request, self.retry, on_delta=on_delta if collect else None
            )
        except anyio.get_cancelled_exc_class():
            for offset in range(count):
                index = first + offset
                content = "".join(state.partial.get(index, [])) or None
                reasoning = "".join(state.partial_reasoning.get(index, [])) or None
                state.trajectories[index] = Trajectory(
                    index=index,
                    status="cancelled",
                    content=content,
                    reasoning=reasoning,
                    # One token per streamed delta, as SGLang and vLLM stream: an estimate.
                    usage=Usage(
                        completion_tokens=len(state.partial.get(index, []))
                        + len(state.partial_reasoning.get(index, []))
                    ),
                    latency_s=self.clock() - started,
                    **base,
                )
            raise
        except BackendError as error:
            info = ErrorInfo(type=type(error).__name__, message=str(error), status_code=error.status_code)
            for offset in range(count):
                trajectory = Trajectory(
                    index=first + offset,
                    status="failed",
                    error=info,
                    attempts=error.attempt,
                    latency_s=self.clock() - started,
                    **base,
                )
                state.trajectories[first + offset] = trajectory
            await self._report([state.trajectories[first + o] for o in range(count)], emit)
            return
        latency = self.clock() - started
        finished: list[Trajectory] = []
        for offset, completion in enumerate(call.completions):
            trajectory = await self._trajectory(completion, first + offset, latency, call.attempts, base)
            state.trajectories[first + offset] = trajectory
            state.finished.append(first + offset)
            finished.append(trajectory)
            if trajectory.ok:
                state.successes += 1
        await self._report(finished, emit)
        if state.successes >= state.target and not state.reached:
            state.reached = True
            if None in state.trajectories:  # calls still running: cut them
                scope.cancel()

    async def _trajectory(
        self, completion: Completion, index: int, latency: float, attempts: int, base: dict[str, Any]
    ) -> Trajectory:
        trajectory = Trajectory(
            index=index,
            content=completion.content,
            reasoning=completion.reasoning,
            finish_reason=completion.finish_reason,
            usage=completion.usage,
            latency_s=latency,
            attempts=attempts,
            **{**base, "model": completion.model or base["model"]},
        )
        if trajectory.content:
            trajectory.message = await apply_compactor(self.compactor, trajectory.text)
        return trajectory

    async def _report(self, trajectories: Sequence[Trajectory | None], emit: Emit | None) -> None:
        if emit is None:
            return
        # Shielded: a quorum reached by another call must not swallow this call's events.
        with anyio.CancelScope(shield=True):
            for trajectory in trajectories:
                if trajectory is not None:
                    await emit(TrajectoryFinished(trajectory=trajectory))


def _keep_first(state: _RoundState, width: int) -> list[Trajectory]:
    """With hedging: the first ``width`` trajectories to finish successfully, in launch order."""
    done = [t for i in state.finished if (t := state.trajectories[i]) is not None and t.ok][:width]
    return sorted(done, key=lambda t: t.index)


def _check_min_success(min_success: int | float | None, schedule: Schedule) -> None:
    if min_success is None:
        return
    if isinstance(min_success, bool) or not isinstance(min_success, int | float) or min_success <= 0:
        raise UsageError(f"min_success must be a positive count or a fraction in (0, 1], got {min_success!r}")
    if isinstance(min_success, float) and min_success <= 1.0:
        return
    widest = max(schedule.widths)
    if min_success > widest:
        raise UsageError(
            f"min_success={min_success} is above the widest round ({widest} trajectories): "
            f"use at most {widest} or a fraction such as 0.75"
        )


def _failure_message(outcome: RoundResult, *, final: bool) -> str:
    errors = [t.error.message for t in outcome.trajectories if t.error is not None]
    which = "the final round" if final else f"round {outcome.index}"
    detail = f"; first error: {errors[0]}" if errors else " (no trajectory returned content)"
    return f"every trajectory of {which} failed ({len(outcome.trajectories)} launched){detail}"
