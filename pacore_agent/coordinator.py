"""The Coordinator: schedule -> rounds -> `SolveResult`.

Round r launches K_r trajectories on P(x, M_{r-1}) in one task group; every request holds one slot of
the backend's limiter (shared by every problem in flight) and retries outside it. Finished
trajectories are compacted to messages; failed ones are recorded and left out. A round whose finished
trajectories leave no message (all empty) hands the next round the problem alone, as the paper does for
an empty M (Appendix B), and says so in ``info["bypassed_rounds"]``. A final round of one
trajectory gives the answer, C(final trajectory). This is the one way pacore runs a round: the CLI, the
server, the benchmarks and training all come through here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio

from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest, SamplingParams
from pacore_agent.budget import Budget, BudgetTracker
from pacore_agent.compactors import Compactor, compact, final_conclusion
from pacore_agent.exceptions import (
    BackendError,
    BudgetExceeded,
    PacoreError,
    RoundFailedError,
    SolveError,
    UsageError,
)
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


@dataclass(slots=True)
class _RoundState:
    """One round: what its calls share, and what they have gathered so far."""

    key: str
    round: int
    prompt: Messages
    trajectories: list[Trajectory | None]
    target: int
    emit: Emit | None = None
    tokens: bool = False  # emit TokenDelta events
    collect: bool = False  # stream, keeping partial output
    tracker: BudgetTracker | None = None
    scope: anyio.CancelScope | None = None  # the round's task group: cut when the quorum is reached
    successes: int = 0
    reached: bool = False
    budget_hit: bool = False
    cut: bool = False
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
        backend: Where trajectories come from: one backend, or one per round (final round included),
            e.g. a cheap explorer for the first rounds and a stronger synthesizer for the last. Default:
            an `OpenAIBackend` built from the environment (``PACORE_BASE_URL`` / ``OPENAI_BASE_URL``,
            ``PACORE_API_KEY`` / ``OPENAI_API_KEY``, ``PACORE_MODEL``); the coordinator then owns it.
        compactor: C, from a trajectory's text to its message (default `final_conclusion`).
        template: Override of the synthesis template (Jinja2 source or a callable).
        sampling: Sampling settings of every request (default temperature = top_p = 1.0), or one per
            round.
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
        budget: Limits of each solve (calls, tokens, cost, wall time); see `pacore_agent.budget`.
        adaptive_stop: When set (a fraction in (0, 1]), skip the remaining rounds if at least that share
            of the first round's answers agree (math equivalence); the answer is then a conclusion of
            the agreeing class. Off by default.
        stream_tokens: Which rounds emit `TokenDelta` events in `stream` (``"final"`` by default).
        clock: Monotonic clock (injected in tests).
    """

    def __init__(
        self,
        schedule: ScheduleLike = "low",
        backend: Backend | Sequence[Backend] | None = None,
        *,
        compactor: Compactor = final_conclusion,
        template: SynthesisTemplate | None = None,
        sampling: SamplingParams | Sequence[SamplingParams] | None = None,
        seed: int = 0,
        order: OrderPolicy = "seeded",
        retry: RetryPolicy | None = None,
        max_width: int = DEFAULT_MAX_WIDTH,
        n_per_request: int = 1,
        min_success: int | float | None = None,
        round_timeout: float | None = None,
        hedge: int | float = 0,
        budget: Budget | None = None,
        adaptive_stop: float | None = None,
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
        if adaptive_stop is not None and not 0 < adaptive_stop <= 1:
            raise UsageError(f"adaptive_stop must be a fraction in (0, 1], got {adaptive_stop!r}")
        self._owns_backend = backend is None
        if backend is None:
            from pacore_agent.backends.env import backend_from_env

            backend = backend_from_env()
        rounds = len(self.schedule.rounds)
        self.backends: list[Backend] = _per_round(backend, rounds, "backend", Backend)
        self.samplings: list[SamplingParams] = _per_round(
            sampling or SamplingParams(), rounds, "sampling", SamplingParams
        )
        if budget is not None:
            budget.check_models([getattr(b, "model", b.name) for b in self.backends])
        self.compactor = compactor
        self.template = template
        self.seed = seed
        self.order = order
        self.retry = retry or RetryPolicy()
        self.n_per_request = n_per_request
        self.min_success = min_success
        self.round_timeout = round_timeout
        self.hedge = hedge
        self.budget = budget
        self.adaptive_stop = adaptive_stop
        self.stream_tokens = stream_tokens
        self.clock = clock

    @property
    def backend(self) -> Backend:
        """The backend of the first round (the only one unless backends differ per round)."""
        return self.backends[0]

    @property
    def sampling(self) -> SamplingParams:
        """The sampling settings of the first round."""
        return self.samplings[0]

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

    async def solve(self, problem: Problem, *, first_round: RoundResult | None = None) -> SolveResult:
        """Solve one problem.

        Args:
            problem: The problem text, or chat messages (the last user message holds the problem;
                earlier turns are kept as history in every round).
            first_round: A first round run elsewhere, e.g. drawn from a pool of pre-generated
                trajectories (the paper's evaluation protocol); it stands for round 0 (see
                `adopt_round`) and the solve goes on from there.

        Returns:
            The answer with the whole trace.

        Raises:
            UsageError: The problem is empty or has no user turn.
            RoundFailedError: Every trajectory of a round failed; ``.partial`` holds what finished.
        """
        return await self._solve(normalize_problem(problem), emit=None, first_round=first_round)

    async def stream(
        self, problem: Problem, *, first_round: RoundResult | None = None
    ) -> AsyncGenerator[Event, None]:
        """Solve one problem, yielding live events; the last one is `Done` with the result.

        Events: `RoundStarted`, `TrajectoryFinished`, `TokenDelta` (streaming backends; final round by
        default), `RoundFinished`, `Done`. `solve` runs the same path without listening.
        """
        messages = normalize_problem(problem)
        send, receive = anyio.create_memory_object_stream[Event | BaseException](max_buffer_size=math.inf)

        async def produce() -> None:
            async with send:
                try:
                    await self._solve(messages, emit=send.send, first_round=first_round)
                except PacoreError as error:
                    await send.send(error)

        failure: BaseException | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            async with receive:
                async for item in receive:
                    if isinstance(item, BaseException):
                        failure = item
                        break
                    yield item
        if failure is not None:
            raise failure  # outside the task group, so callers get the error itself, not a group

    async def run_round(
        self,
        problem: Problem,
        width: int,
        *,
        references: Sequence[str] = (),
        round_index: int = 0,
    ) -> RoundResult:
        """Run one round of ``width`` trajectories on P(problem, references), exactly as `solve` does.

        The building block of every strategy (single call, self-consistency, best-of-N) and of message
        pools: same backend limiter, retries, compaction, quorum, hedging and budget.

        Args:
            problem: The problem text or chat messages.
            width: Trajectories to run.
            references: Messages of a previous round (empty: the conversation is sent unchanged).
            round_index: Which round's backend and sampling settings to use (and to record).
        """
        messages = normalize_problem(problem)
        if not 0 <= round_index < len(self.backends):
            raise UsageError(f"round_index must be within [0, {len(self.backends)}), got {round_index}")
        if width < 1:
            raise UsageError(f"width must be at least 1, got {width}")
        tracker = BudgetTracker(self.budget, self.clock) if self.budget is not None else None
        prompt = build_prompt(messages, list(references), self.template)
        return await self._run_round(
            problem_key(messages), round_index, width, prompt, None, final=False, tracker=tracker
        )

    async def adopt_round(self, problem: Problem, given: RoundResult, *, round_index: int = 0) -> RoundResult:
        """Take a round run elsewhere (a pool's drawn trajectories) as if this coordinator had run it.

        Each finished trajectory is compacted again with this coordinator's C, the budget is charged for
        every call, ``TrajectoryFinished`` events go out, and the references are ordered by this
        coordinator's order policy: what `solve` does with a ``first_round``. Trajectories that kept only
        their message (a pool without full trajectories) are compacted from that message.

        Args:
            problem: The problem text or chat messages.
            given: The round (its trajectories, their usage, latency and finish reasons).
            round_index: Which round it stands for.
        """
        messages = normalize_problem(problem)
        tracker = BudgetTracker(self.budget, self.clock) if self.budget is not None else None
        return await self._adopt_round(problem_key(messages), round_index, given, None, tracker)

    async def solve_many(
        self,
        problems: Sequence[Problem],
        *,
        max_in_flight: int | None = None,
        budget: Budget | None = None,
    ) -> list[SolveResult | SolveError]:
        """Solve many problems concurrently through the same backend limiter.

        A problem whose solve fails gets its `SolveError` (with ``.partial``) in its slot; the others
        are unaffected.

        Args:
            problems: The problems.
            max_in_flight: Problems solved at once (default: all; the backend's limiter bounds the
                requests anyway).
            budget: Limits shared by the whole batch (each solve also keeps the coordinator's own).
        """
        return await collect(
            self.solve_iter(problems, max_in_flight=max_in_flight, budget=budget), len(problems)
        )

    async def solve_iter(
        self,
        problems: Sequence[Problem],
        *,
        max_in_flight: int | None = None,
        budget: Budget | None = None,
    ) -> AsyncIterator[tuple[int, SolveResult | SolveError]]:
        """Like `solve_many`, yielding ``(index, result)`` as each problem finishes."""
        conversations = [normalize_problem(p) for p in problems]  # bad input fails before any request
        if budget is not None:
            budget.check_models([getattr(b, "model", b.name) for b in self.backends])
        batch = BudgetTracker(budget, self.clock) if budget is not None else None

        async def solve(messages: Messages) -> SolveResult:
            return await self._solve(messages, emit=None, batch=batch)

        async for item in solve_each(solve, conversations, max_in_flight):
            yield item

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

    async def _solve(
        self,
        messages: Messages,
        emit: Emit | None,
        batch: BudgetTracker | None = None,
        first_round: RoundResult | None = None,
    ) -> SolveResult:
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
        if first_round is not None and first_round.width != self.rounds[0]:
            raise UsageError(
                f"first_round has width {first_round.width}; the schedule's first round is {self.rounds[0]}"
            )
        # A given first round took its own time: the solve's wall time counts it.
        start = self.clock() - (first_round.wall_s if first_round is not None else 0.0)
        tracker: BudgetTracker | None = batch
        if self.budget is not None:
            tracker = BudgetTracker(self.budget, self.clock, parent=batch)
        widths = self.rounds
        references: list[str] = []
        round_index = 0
        while round_index < len(widths):
            final = round_index == len(widths) - 1
            prompt = build_prompt(messages, references, self.template)
            backend = self.backends[round_index]
            if emit is not None:
                await emit(RoundStarted(round=round_index, width=widths[round_index], model=backend.name))
            # In "synthesize" mode the final round is the one call allowed past an exhausted budget.
            spare = final and self.budget is not None and self.budget.on_exceeded == "synthesize"
            if round_index == 0 and first_round is not None:
                outcome = await self._adopt_round(key, 0, first_round, emit, tracker)
            else:
                outcome = await self._run_round(
                    key,
                    round_index,
                    widths[round_index],
                    prompt,
                    emit,
                    final=final,
                    tracker=None if spare else tracker,
                )
            result.rounds.append(outcome)
            result.wall_s = self.clock() - start
            if emit is not None:
                await emit(RoundFinished(result=outcome))
            if tracker is not None:
                result.info["budget_used"] = tracker.summary()
            if final:
                finished = [t for t in outcome.trajectories if t.ok]
                if not finished:
                    if outcome.stop_reason == "budget":
                        raise self._budget_error(result, tracker)
                    raise RoundFailedError(_failure_message(outcome, final=True), partial=result)
                result.final = finished[0]
                result.answer = final_conclusion(finished[0].text)
                break
            if outcome.stop_reason == "budget":
                if self.budget is None or self.budget.on_exceeded == "raise" or not outcome.messages:
                    raise self._budget_error(result, tracker)
                result.info["budget_exceeded"] = tracker.exceeded() if tracker else "budget"
                references = outcome.messages
                round_index = len(widths) - 1  # straight to the final synthesis
                continue
            if not any(t.ok for t in outcome.trajectories):
                raise RoundFailedError(_failure_message(outcome, final=False), partial=result)
            if not outcome.messages:  # finished, but no message (e.g. all empty): Appendix B's bypass
                result.info.setdefault("bypassed_rounds", []).append(round_index)
            if round_index == 0 and self.adaptive_stop is not None and await self._agreed(result, outcome):
                break
            references = outcome.messages
            round_index += 1
        result.wall_s = self.clock() - start
        if emit is not None:
            await emit(Done(result=result))
        return result

    def _budget_error(self, result: SolveResult, tracker: BudgetTracker | None) -> BudgetExceeded:
        which = (tracker.exceeded() if tracker else None) or "budget"
        return BudgetExceeded(
            f"the {which} budget ran out after {len(result.rounds)} round(s); the partial result keeps "
            "everything that finished",
            partial=result,
            budget=which,
        )

    async def _agreed(self, result: SolveResult, outcome: RoundResult) -> bool:
        """Adaptive stop: do the first round's answers agree enough to skip the remaining rounds?"""
        from pacore_agent.evaluation.answers import avote, extract_answer

        finished = [t for t in outcome.trajectories if t.ok]
        answers = [extract_answer(final_conclusion(t.text)) for t in finished]
        votes = await avote(answers)
        share = votes.winner.count / len(outcome.trajectories) if votes.winner and votes.answer else 0.0
        result.info["adaptive_stop"] = {"agreement": share, "threshold": self.adaptive_stop, "stopped": False}
        if votes.winner is None or votes.answer is None or share < (self.adaptive_stop or 1.0):
            return False
        chosen = finished[votes.winner.members[0]]
        result.final = chosen
        result.answer = final_conclusion(chosen.text)
        result.info["adaptive_stop"].update(stopped=True, answer=votes.answer)
        return True

    async def _adopt_round(
        self, key: str, round_index: int, given: RoundResult, emit: Emit | None, tracker: BudgetTracker | None
    ) -> RoundResult:
        """See `adopt_round`: each given call is charged, then its trajectories are compacted with C."""
        trajectories: list[Trajectory] = []
        stop_reason = "complete"
        for source in given.trajectories:
            if tracker is not None and not tracker.start_call():
                stop_reason = "budget"
                break
            trajectory = source.model_copy(update={"round": round_index, "message": None})
            if trajectory.ok and trajectory.content:
                await self._compact(trajectory)
            trajectories.append(trajectory)
            if tracker is not None:
                tracker.charge(trajectory.usage, trajectory.model, extra_attempts=trajectory.attempts - 1)
        if tracker is not None and tracker.overrun() is not None:
            stop_reason = "budget"
        await self._report(trajectories, emit)
        order = reference_order(self.order, trajectories, round_rng(self.seed, key, round_index))
        return RoundResult(
            index=round_index,
            width=given.width,
            trajectories=trajectories,
            order=[trajectories[i].index for i in order],
            messages=[trajectories[i].message or "" for i in order],
            wall_s=given.wall_s,
            stop_reason=stop_reason,
        )

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
        self,
        key: str,
        round_index: int,
        width: int,
        prompt: Messages,
        emit: Emit | None,
        *,
        final: bool,
        tracker: BudgetTracker | None,
    ) -> RoundResult:
        launched = width + self._extra(width)
        cuts = (
            self.min_success is not None
            or self.round_timeout is not None
            or launched > width
            or tracker is not None
        )
        tokens = emit is not None and (
            self.stream_tokens == "all" or (self.stream_tokens == "final" and final)
        )
        limits = [
            t for t in (self.round_timeout, tracker.remaining_s() if tracker else None) if t is not None
        ]
        # Partial output of cut trajectories is kept only when the backend streams anyway: streaming
        # every request just in case would cost more than the partial text is worth.
        streams = self.backends[round_index].streams
        state = _RoundState(
            key=key,
            round=round_index,
            prompt=prompt,
            trajectories=[None] * launched,
            target=min(self._target(width), width),
            emit=emit,
            tokens=tokens,
            collect=tokens or (cuts and streams),
            tracker=tracker,
        )
        start = self.clock()
        groups = [
            (first, min(self.n_per_request, launched - first))
            for first in range(0, launched, self.n_per_request)
        ]
        sampling = self.samplings[round_index]
        shared = (
            {
                count: GenerationRequest(messages=prompt, n=count, sampling=sampling)
                for count in {c for _, c in groups}
            }
            if sampling.seed is None
            else {}
        )
        # No limit, no cancel scope: a round without one is the common case, and scopes cost per round.
        deadline = anyio.move_on_after(min(limits)) if limits else None
        with _lone_error(), deadline or contextlib.nullcontext():
            async with anyio.create_task_group() as group:
                state.scope = group.cancel_scope
                for call_index, (first, count) in enumerate(groups):
                    if tracker is not None and not tracker.start_call():
                        state.budget_hit = True
                        break
                    group.start_soon(self._call, state, call_index, first, count, shared.get(count))
        trajectories = [t for t in state.trajectories if t is not None]
        if emit is not None:
            for trajectory in trajectories:
                if trajectory.status == "cancelled":
                    await emit(TrajectoryFinished(trajectory=trajectory))
        timed_out = deadline is not None and deadline.cancelled_caught
        budget_hit = state.budget_hit or (
            timed_out and tracker is not None and tracker.exceeded() == "wall_time"
        )
        if budget_hit:
            stop_reason = "budget"
        elif timed_out:
            stop_reason = "deadline"
        else:
            stop_reason = "quorum" if state.cut else "complete"
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
        self, state: _RoundState, call_index: int, first: int, count: int, request: GenerationRequest | None
    ) -> None:
        """One request of a round: trajectories ``first`` to ``first + count - 1``."""
        backend = self.backends[state.round]
        if request is None:  # per-call seeds: the request is this call's own
            sampling = self.samplings[state.round]
            if sampling.seed is not None:
                sampling = sampling.with_(
                    seed=_derived_seed(sampling.seed, state.key, state.round, call_index)
                )
            request = GenerationRequest(messages=state.prompt, n=count, sampling=sampling)
        started = self.clock()
        emit, tracker = state.emit, state.tracker
        on_delta: DeltaCallback | None = None
        if state.collect:

            async def on_delta(choice: int, field_name: Literal["content", "reasoning"], text: str) -> None:
                index = first + choice
                buffers = state.partial if field_name == "content" else state.partial_reasoning
                buffers.setdefault(index, []).append(text)
                if state.tokens and emit is not None:
                    await emit(TokenDelta(round=state.round, index=index, field=field_name, text=text))

        base = {"round": state.round, "call": call_index, "model": backend.name}
        indices = range(first, first + count)
        try:
            call = await call_with_retries(backend, request, self.retry, on_delta=on_delta)
        except anyio.get_cancelled_exc_class():
            for index in indices:
                content = state.partial.get(index, [])
                reasoning = state.partial_reasoning.get(index, [])
                state.trajectories[index] = Trajectory(
                    index=index,
                    status="cancelled",
                    content="".join(content) or None,
                    reasoning="".join(reasoning) or None,
                    # One token per streamed delta, as SGLang and vLLM stream: an estimate.
                    usage=Usage(completion_tokens=len(content) + len(reasoning)),
                    latency_s=self.clock() - started,
                    **base,
                )
            raise
        except BackendError as error:
            info = ErrorInfo(type=type(error).__name__, message=str(error), status_code=error.status_code)
            for index in indices:
                state.trajectories[index] = Trajectory(
                    index=index,
                    status="failed",
                    error=info,
                    attempts=error.attempt,
                    latency_s=self.clock() - started,
                    **base,
                )
            if tracker is not None:
                tracker.charge(Usage(), backend.name, extra_attempts=error.attempt - 1)
            await self._report([state.trajectories[i] for i in indices], emit)
            return
        latency = self.clock() - started
        finished: list[Trajectory] = []
        for index, completion in zip(indices, call.completions, strict=True):
            trajectory = await self._trajectory(completion, index, latency, call.attempts, base)
            state.trajectories[index] = trajectory
            state.finished.append(index)
            finished.append(trajectory)
            if trajectory.ok:
                state.successes += 1
        if tracker is not None:
            tracker.charge(
                Usage.sum([t.usage for t in finished]), finished[0].model, extra_attempts=call.attempts - 1
            )
        if emit is not None:
            await self._report(finished, emit)
        budget_out = tracker is not None and tracker.overrun() is not None
        if budget_out:
            state.budget_hit = True
        if (state.successes >= state.target and not state.reached) or budget_out:
            state.reached = state.reached or state.successes >= state.target
            if state.scope is not None and any(t is None for t in state.trajectories):
                state.cut = True  # calls still running: cut them
                state.scope.cancel()

    async def _trajectory(
        self, completion: Completion, index: int, latency: float, attempts: int, base: dict[str, Any]
    ) -> Trajectory:
        # Validating construction with the defaults left out (a `None` reasoning passed explicitly costs
        # pydantic twice the time of the default): faster than `model_construct`, which skips validation
        # in Python. This is on the hot path of every trajectory.
        fields: dict[str, Any] = {
            "round": base["round"],
            "index": index,
            "content": completion.content,
            "finish_reason": completion.finish_reason,
            "usage": completion.usage,
            "latency_s": latency,
            "attempts": attempts,
            "call": base["call"],
            "model": completion.model or base["model"],
        }
        if completion.reasoning is not None:
            fields["reasoning"] = completion.reasoning
        trajectory = Trajectory(**fields)
        if trajectory.content:
            await self._compact(trajectory)
        return trajectory

    async def _compact(self, trajectory: Trajectory) -> None:
        """Set the trajectory's message to C(its text); tokens C spent (`summarize`) join its usage."""
        trajectory.message, spent = await compact(self.compactor, trajectory.text)
        if spent.total_tokens:
            trajectory.usage = trajectory.usage + spent

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


async def solve_each(
    solve: Callable[[Messages], Awaitable[SolveResult]],
    conversations: Sequence[Messages],
    max_in_flight: int | None = None,
) -> AsyncIterator[tuple[int, SolveResult | SolveError]]:
    """Run ``solve`` on every conversation concurrently, yielding ``(index, result)`` as each finishes.

    A failed solve yields its `SolveError` (with ``.partial``); the others are unaffected.
    """
    if max_in_flight is not None and max_in_flight < 1:
        raise UsageError(f"max_in_flight must be at least 1, got {max_in_flight}")
    gate = anyio.CapacityLimiter(max_in_flight or max(len(conversations), 1))
    send, receive = anyio.create_memory_object_stream[tuple[int, SolveResult | SolveError]](math.inf)

    async def one(index: int, messages: Messages) -> None:
        async with gate:
            try:
                result: SolveResult | SolveError = await solve(messages)
            except SolveError as error:
                result = error
        await send.send((index, result))

    async with anyio.create_task_group() as group, send:
        for index, messages in enumerate(conversations):
            group.start_soon(one, index, messages)
        async with receive:
            for _ in conversations:
                yield await receive.receive()


async def collect(
    results: AsyncIterator[tuple[int, SolveResult | SolveError]], count: int
) -> list[SolveResult | SolveError]:
    """The results of `solve_each` in problem order."""
    ordered: list[SolveResult | SolveError | None] = [None] * count
    async for index, result in results:
        ordered[index] = result
    return [r for r in ordered if r is not None]


@contextmanager
def _lone_error() -> Iterator[None]:
    """Re-raise pacore errors of a task group as the first of them, by its own class.

    A replay miss or a model that will not load then reaches callers by its class, not inside a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        # Concurrent calls tend to fail alike (every request misses the replay file): the first says it.
        if all(isinstance(error, PacoreError) for error in group.exceptions):
            raise group.exceptions[0] from None
        raise


def _per_round(value: Any, rounds: int, name: str, kind: type) -> list[Any]:
    """One value per round from a single value or a sequence of exactly ``rounds`` values."""
    if isinstance(value, kind):
        return [value] * rounds
    values = list(value)
    if len(values) != rounds or not all(isinstance(v, kind) for v in values):
        raise UsageError(
            f"{name} must be one {kind.__name__} or a list of {rounds} (one per round, final round included), "
            f"got {len(values)} items"
        )
    return values
