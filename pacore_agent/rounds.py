"""One round of PaCoRe: K trajectories on one prompt, in parallel, as `Coordinator` runs it.

Every request holds one slot of the backend's limiter (shared by every problem in flight) and retries
outside it. Whatever one call raises is that call's failure, recorded on its trajectories; it never
cancels the round. Finished trajectories are compacted to messages; failed ones are recorded and left
out. A quorum (``min_success``), a deadline (``round_timeout``), hedging and budgets cut the calls still
running; their partial output is kept (when the backend streams) and marked ``cancelled``.

`RoundRunner` holds this machinery; `Coordinator` adds the schedule of rounds and the public API.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest, SamplingParams
from pacore_agent.budget import BudgetTracker
from pacore_agent.compactors import Compactor, compact
from pacore_agent.exceptions import BackendError, PacoreError
from pacore_agent.ordering import OrderPolicy, reference_order, round_rng
from pacore_agent.prompts import Messages
from pacore_agent.results import (
    AttemptRestarted,
    ErrorInfo,
    Event,
    RoundResult,
    TokenDelta,
    Trajectory,
    TrajectoryFinished,
    Usage,
)
from pacore_agent.retry import RetryPolicy, call_with_retries

__all__ = ["Emit", "RoundRunner", "TokenStreaming", "error_info"]

Emit = Callable[[Event], Awaitable[None]]
TokenStreaming = Literal["final", "all", "none"]


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
    tracker: BudgetTracker | None = None  # charged with every call and token
    enforce: bool = False  # the tracker's limits cut this round (not the final round in "synthesize")
    scope: anyio.CancelScope | None = None  # the round's task group: cut when the quorum is reached
    successes: int = 0
    reached: bool = False
    budget_hit: bool = False
    cut: bool = False
    finished: list[int] = field(default_factory=list)
    partial: dict[int, list[str]] = field(default_factory=dict)
    partial_reasoning: dict[int, list[str]] = field(default_factory=dict)


class RoundRunner:
    """Runs rounds of parallel trajectories; the settings are `Coordinator`'s (see its docstring)."""

    backends: list[Backend]
    samplings: list[SamplingParams]
    compactor: Compactor
    seed: int
    order: OrderPolicy
    retry: RetryPolicy
    n_per_request: int
    min_success: int | float | None
    round_timeout: float | None
    hedge: int | float
    stream_tokens: TokenStreaming
    clock: Callable[[], float]

    async def _adopt_round(
        self, key: str, round_index: int, given: RoundResult, emit: Emit | None, tracker: BudgetTracker | None
    ) -> RoundResult:
        """See `Coordinator.adopt_round`: each call charged, its trajectories compacted with C."""
        trajectories: list[Trajectory] = []
        stop_reason = "complete"
        for source in given.trajectories:
            if tracker is not None and not tracker.start_call(count=source.attempts):
                stop_reason = "budget"
                break
            trajectory = source.model_copy(update={"round": round_index, "message": None})
            if trajectory.ok and trajectory.content:
                await self._compact(trajectory)
            trajectories.append(trajectory)
            if tracker is not None:
                tracker.charge(trajectory.usage, trajectory.model)
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
        spare: bool = False,
    ) -> RoundResult:
        launched = width + self._extra(width)
        cuts = (
            self.min_success is not None
            or self.round_timeout is not None
            or launched > width
            or (tracker is not None and not spare)
        )
        tokens = emit is not None and (
            self.stream_tokens == "all" or (self.stream_tokens == "final" and final)
        )
        limits = [
            t
            for t in (self.round_timeout, tracker.remaining_s() if tracker and not spare else None)
            if t is not None
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
            enforce=tracker is not None and not spare,
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
                    if tracker is not None and not tracker.start_call(force=spare):
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
        made = 1  # attempts started, whatever ends the call

        async def before_retry(attempt: int, error: BaseException) -> bool:
            nonlocal made
            if tracker is not None and not tracker.start_call(force=not state.enforce):
                state.budget_hit = True
                return False  # no room for the retry: the call fails with its last error
            made = attempt
            # The retry streams from its first token again: the failed attempt's text is void.
            for index in indices:
                state.partial.pop(index, None)
                state.partial_reasoning.pop(index, None)
            if state.tokens and emit is not None:
                info = error_info(error)
                for index in indices:
                    await emit(AttemptRestarted(round=state.round, index=index, attempt=attempt, error=info))
            return True

        try:
            call = await call_with_retries(
                backend, request, self.retry, on_delta=on_delta, before_retry=before_retry
            )
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
                    attempts=made,
                    latency_s=self.clock() - started,
                    **base,
                )
            if tracker is not None:  # its call was charged as it started; its tokens as far as known
                cut = [t.usage for i in indices if (t := state.trajectories[i]) is not None]
                tracker.charge(Usage.sum(cut), backend.name)
            raise
        except Exception as error:
            if isinstance(error, PacoreError) and not isinstance(error, BackendError):
                raise  # a setup error (replay miss, model not loaded): every call fails alike
            # Anything else is this call's failure, never its round's: a bad header, a client bug.
            for index in indices:
                state.trajectories[index] = Trajectory(
                    index=index,
                    status="failed",
                    error=error_info(error),
                    attempts=made,
                    latency_s=self.clock() - started,
                    **base,
                )
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
        if tracker is not None:  # every attempt was charged as it started
            tracker.charge(Usage.sum([t.usage for t in finished]), finished[0].model)
        if emit is not None:
            await self._report(finished, emit)
        budget_out = tracker is not None and state.enforce and tracker.overrun() is not None
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
            try:
                await self._compact(trajectory)
            except Exception as error:  # a compactor bug fails its trajectory, not the round
                trajectory.status, trajectory.error = "failed", error_info(error)
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


def error_info(error: BaseException) -> ErrorInfo:
    """How a failed call is recorded: its exception's type and message (never empty)."""
    status = getattr(error, "status_code", None)
    return ErrorInfo(
        type=type(error).__name__,
        message=str(error) or repr(error),
        status_code=status if isinstance(status, int) else None,
    )


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
