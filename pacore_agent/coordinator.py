"""The Coordinator: schedule -> rounds -> `SolveResult`.

Round r launches K_r trajectories on P(x, M_{r-1}) (`pacore_agent.rounds`: one task group, each
request holding one slot of the backend's limiter and retrying outside it). Finished trajectories are
compacted to messages; failed ones are recorded and left out. A round whose finished trajectories leave
no message (all empty) hands the next round the problem alone, as the paper does for an empty M
(Appendix B), and says so in ``info["bypassed_rounds"]``. A final round of one trajectory gives the
answer, C(final trajectory). This is the one way pacore runs a round: the CLI, the server, the
benchmarks and training all come through here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Self

import anyio

from pacore_agent.backends.base import Backend, SamplingParams
from pacore_agent.background import BackgroundIterator
from pacore_agent.batch import collect, solve_each
from pacore_agent.budget import Budget, BudgetTracker
from pacore_agent.compactors import Compactor, final_conclusion
from pacore_agent.exceptions import BudgetExceeded, RoundFailedError, SolveError, UsageError
from pacore_agent.ordering import OrderPolicy
from pacore_agent.prompts import Messages, SynthesisTemplate, blind_prompt, build_prompt, normalize_problem
from pacore_agent.results import Done, Event, RoundFinished, RoundResult, RoundStarted, SolveResult
from pacore_agent.retry import RetryPolicy
from pacore_agent.rounds import Emit, RoundRunner, TokenStreaming
from pacore_agent.schedule import DEFAULT_MAX_WIDTH, Schedule, ScheduleLike

__all__ = ["Coordinator", "Problem"]

Problem = str | Sequence[dict[str, Any]]
"""A problem: its text, or an OpenAI-style list of chat messages."""


def problem_key(messages: Messages) -> str:
    """A stable identity of a conversation, for seeding."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class Coordinator(RoundRunner):
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
        template: Override of the synthesis template (Jinja2 source or a callable);
            `pacore_agent.prompts.blind_prompt` runs the blind counterfactual (method ``pacore-blind``).
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
        if round_timeout is not None and (
            isinstance(round_timeout, bool)
            or not isinstance(round_timeout, int | float)
            or not math.isfinite(round_timeout)
            or round_timeout <= 0
        ):
            raise UsageError(f"round_timeout must be a positive number of seconds, got {round_timeout!r}")
        _check_count_or_share("hedge", hedge, zero=True)
        if adaptive_stop is not None and not 0 < adaptive_stop <= 1:
            raise UsageError(f"adaptive_stop must be a fraction in (0, 1], got {adaptive_stop!r}")
        self._owns_backend = backend is None
        self._entered = self._in_use = 0
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
        family = "pacore-blind" if self.template is blind_prompt else "pacore"
        return f"{family}-{self.schedule.name}" if self.schedule.name else f"{family}{self.schedule}"

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
        messages = normalize_problem(problem)
        async with self.in_use():
            return await self._solve(messages, emit=None, first_round=first_round)

    def stream(
        self, problem: Problem, *, first_round: RoundResult | None = None
    ) -> BackgroundIterator[Event]:
        """Solve one problem, yielding live events; the last one is `Done` with the result.

        Events: `RoundStarted`, `TrajectoryFinished`, `TokenDelta` (streaming backends; final round by
        default), `AttemptRestarted` (a retry voids the text streamed so far for a trajectory),
        `RoundFinished`, `Done`. `solve` runs the same path without listening. The solve runs in a task
        of its own: breaking out early cancels it and its requests, never the caller; ``aclose()`` (or
        ``async with``) also waits until they have stopped. A failed solve raises its error, by its
        class, from the iteration.
        """
        messages = normalize_problem(problem)

        async def produce(send: Emit) -> None:
            async with self.in_use():
                await self._solve(messages, emit=send, first_round=first_round)

        return BackgroundIterator(produce)

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
        async with self.in_use():
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

    def solve_iter(
        self,
        problems: Sequence[Problem],
        *,
        max_in_flight: int | None = None,
        budget: Budget | None = None,
    ) -> BackgroundIterator[tuple[int, SolveResult | SolveError]]:
        """Like `solve_many`, yielding ``(index, result)`` as each problem finishes.

        Breaking out early cancels the solves still running.
        """
        conversations = [normalize_problem(p) for p in problems]  # bad input fails before any request
        if budget is not None:
            budget.check_models([getattr(b, "model", b.name) for b in self.backends])
        batch = BudgetTracker(budget, self.clock) if budget is not None else None

        async def solve(messages: Messages) -> SolveResult:
            return await self._solve(messages, emit=None, batch=batch)

        return solve_each(solve, conversations, max_in_flight, method=self.method, session=self.in_use)

    async def aclose(self) -> None:
        """Close the backend if the coordinator created it."""
        if self._owns_backend:
            await self.backend.aclose()

    @contextlib.asynccontextmanager
    async def in_use(self) -> AsyncIterator[None]:
        """Keep a backend the coordinator built from the environment open while calls run.

        Every public call runs inside it. Outside ``async with coordinator``, the owned backend is closed
        when the last call in flight ends, so the one-liner ``await Coordinator(...).solve(x)`` leaves
        no session or socket open (the next call opens new connections).
        """
        self._in_use += 1
        try:
            yield
        finally:
            self._in_use -= 1
            if self._owns_backend and not self._entered and not self._in_use:
                with anyio.CancelScope(shield=True):
                    await self.backend.aclose()

    async def __aenter__(self) -> Self:
        self._entered += 1
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._entered -= 1
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
                    tracker=tracker,
                    spare=spare,
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


def _check_min_success(min_success: int | float | None, schedule: Schedule) -> None:
    if min_success is None:
        return
    _check_count_or_share("min_success", min_success, zero=False)
    if isinstance(min_success, float) and min_success <= 1.0:
        return
    widest = max(schedule.widths)
    if min_success > widest:
        raise UsageError(
            f"min_success={min_success} is above the widest round ({widest} trajectories): "
            f"use at most {widest} or a fraction such as 0.75"
        )


def _check_count_or_share(name: str, value: object, *, zero: bool) -> None:
    """A count (a whole number) or a share of the round's width (a fraction up to 1)."""
    what = "a count or a fraction >= 0" if zero else "a positive count or a fraction in (0, 1]"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{name} must be {what}, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise UsageError(f"{name} must be {what}, got {value!r}")
    if isinstance(value, float) and value > 1 and not value.is_integer():
        raise UsageError(
            f"{name}={value} is neither a fraction in (0, 1] nor a whole count: use e.g. 0.5 or {math.ceil(value)}"
        )


def _failure_message(outcome: RoundResult, *, final: bool) -> str:
    errors = [f"{t.error.type}: {t.error.message}" for t in outcome.trajectories if t.error is not None]
    which = "the final round" if final else f"round {outcome.index}"
    detail = f"; first error: {errors[0]}" if errors else " (no trajectory returned content)"
    return f"every trajectory of {which} failed ({len(outcome.trajectories)} launched){detail}"


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
