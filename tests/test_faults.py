"""A call can never take down its round or batch, and retries start clean.

The upstream is the simulated server on loopback; `Raising` wraps the real HTTP backend and raises,
on chosen calls, what a client bug raises (a bare ``ValueError`` from a header it could not parse), so
the engine's containment is tested without depending on which client bug exists today.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from pacore_agent import (
    AttemptRestarted,
    Budget,
    Coordinator,
    Done,
    OpenAIBackend,
    ReplayMissError,
    RetryPolicy,
    RoundFailedError,
    SimConfig,
    SimServer,
    SolveError,
    SolveResult,
    TokenDelta,
)
from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest
from pacore_agent.backends.sim import FAULT_KINDS, Faults
from pacore_agent.exceptions import EndpointConnectionError
from pacore_agent.serving.server import PacoreServer
from tests.helpers import FakeSleep, wait_until

pytestmark = pytest.mark.anyio

PROBLEM = "Let $x$ be the number of primes below 20. Find $x$."
HEADER_BUG = "could not convert string to float: 'soon'"


class Raising(Backend):
    """The real HTTP backend, except that calls for which ``fails(body)`` holds raise ValueError."""

    def __init__(self, inner: OpenAIBackend, fails: Callable[[GenerationRequest, int], bool]) -> None:
        super().__init__(max_concurrency=inner.max_concurrency)
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.streams = inner.streams
        self.fails = fails
        self.calls = 0

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        self.calls += 1
        if self.fails(request, self.calls):
            raise ValueError(HEADER_BUG)
        return await self.inner.generate(request, on_delta=on_delta)

    async def stream_half(self, request: GenerationRequest, on_delta: DeltaCallback | None) -> None:
        """Stream the first half of a real answer's deltas, as a connection cut mid-answer does."""
        deltas: list[tuple[int, Any, str]] = []

        async def keep(choice: int, field: Any, text: str) -> None:
            deltas.append((choice, field, text))

        await self.inner.generate(request, on_delta=keep)
        for delta in deltas[: len(deltas) // 2]:
            if on_delta is not None:
                await on_delta(*delta)


@asynccontextmanager
async def upstream(
    config: SimConfig | None = None, **options: Any
) -> AsyncIterator[tuple[SimServer, OpenAIBackend]]:
    async with SimServer(config or SimConfig(seed=3)) as sim:
        async with OpenAIBackend(sim.base_url, "pacore-sim", **options) as backend:
            yield sim, backend


def _problem_of(request: GenerationRequest) -> str:
    return str(request.messages[-1]["content"])


async def test_an_unexpected_error_fails_its_trajectory_not_its_round() -> None:
    async with upstream() as (_, http):
        backend = Raising(http, lambda _, call: call in (2, 3))
        result = await Coordinator([4], backend, retry=RetryPolicy(sleep=FakeSleep())).solve(PROBLEM)
    first = result.rounds[0]
    statuses = [t.status for t in first.trajectories]
    assert statuses.count("failed") == 2 and statuses.count("ok") == 2
    errors = [t.error for t in first.trajectories if t.error is not None]
    assert all(e.type == "ValueError" and e.message == HEADER_BUG for e in errors)
    assert len(first.messages) == 2 and result.answer


async def test_an_unexpected_error_on_a_retry_keeps_the_attempt_count() -> None:
    config = SimConfig(seed=3, faults=Faults(script=["server_error"]))
    async with upstream(config) as (sim, http):
        backend = Raising(http, lambda _, call: call == 2)  # the retry of the 500
        with pytest.raises(RoundFailedError) as caught:
            await Coordinator([1], backend, retry=RetryPolicy(sleep=FakeSleep())).solve(PROBLEM)
    (trajectory,) = caught.value.partial.trajectories
    assert trajectory.attempts == 2 and trajectory.error is not None
    assert trajectory.error.type == "ValueError"
    assert caught.value.partial.calls == 2 and len(sim.engine.requests) == 1


async def test_solve_many_returns_one_outcome_per_problem_whatever_a_call_raises() -> None:
    async with upstream() as (_, http):
        # Every call of problem #3 raises; the other problems are untouched.
        backend = Raising(http, lambda request, _: "#3" in _problem_of(request))
        coordinator = Coordinator([3], backend, retry=RetryPolicy(sleep=FakeSleep()))
        results = await coordinator.solve_many([f"{PROBLEM} #{i}" for i in range(8)])
    assert len(results) == 8
    failed = results[3]
    assert isinstance(failed, RoundFailedError)
    assert f"ValueError: {HEADER_BUG}" in str(failed)
    assert [t.error.type for t in failed.partial.trajectories if t.error] == ["ValueError"] * 3
    assert all(isinstance(r, SolveResult) and r.answer for i, r in enumerate(results) if i != 3)


async def test_solve_many_turns_a_setup_error_into_that_problems_solve_error() -> None:
    class Broken(Backend):
        name = "broken"

        async def generate(
            self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
        ) -> list[Completion]:
            raise ReplayMissError("the request was never recorded")

    coordinator = Coordinator([2], Broken())
    with pytest.raises(ReplayMissError):  # alone, a setup error reaches the caller by its class
        await coordinator.solve(PROBLEM)
    results = await coordinator.solve_many([PROBLEM, f"{PROBLEM} again"])
    assert len(results) == 2 and all(isinstance(r, SolveError) for r in results)
    assert all(str(r) == "ReplayMissError: the request was never recorded" for r in results)


async def test_bench_stores_a_readable_error_when_every_call_raises(tmp_path: Path) -> None:
    from pacore_agent.evaluation.bench import BenchSettings, parse_methods, read_failures, run_bench
    from pacore_agent.evaluation.datasets import Problem

    problems = [Problem(id=f"p{i}", problem=f"{PROBLEM} #{i}", answer="8") for i in range(3)]
    settings = BenchSettings("mine", parse_methods(["pacore:[2]"]), samples=1)
    async with upstream() as (_, http):
        backend = Raising(http, lambda request, _: "#1" in _problem_of(request))
        summary = await run_bench(settings, problems, backend, tmp_path)
    assert summary.recorded == 2 and len(summary.failed) == 1
    (failure,) = read_failures(tmp_path)
    assert failure.problem_id == "p1" and failure.error.type == "RoundFailedError"
    assert f"ValueError: {HEADER_BUG}" in failure.error.message
    assert "TaskGroup" not in failure.error.message


async def test_serve_answers_an_openai_error_body_when_every_call_raises() -> None:
    async with upstream() as (_, http):
        backend = Raising(http, lambda *_: True)
        async with PacoreServer(backend, retry=RetryPolicy(max_attempts=2, sleep=FakeSleep())) as server:
            async with aiohttp.ClientSession() as session:
                body = {"model": "pacore:[2]", "messages": [{"role": "user", "content": PROBLEM}]}
                async with session.post(f"{server.base_url}/chat/completions", json=body) as response:
                    status, answer = response.status, await response.json()
    assert status == 502
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "round_failed" and f"ValueError: {HEADER_BUG}" in error["message"]


class DropsMidStream(Raising):
    """On chosen calls, streams the first half of the real answer, then the connection drops."""

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        self.calls += 1
        if not self.fails(request, self.calls):
            return await self.inner.generate(request, on_delta=on_delta)
        await self.stream_half(request, on_delta)
        raise EndpointConnectionError("Server disconnected (the stream ended mid-answer)")


async def test_a_retried_stream_starts_clean_and_consumers_are_told() -> None:
    async with upstream(stream=True) as (_, http):
        backend = DropsMidStream(http, lambda _, call: call == 3)  # the final round's first attempt
        coordinator = Coordinator([2], backend, retry=RetryPolicy(sleep=FakeSleep()))
        events = [event async for event in coordinator.stream(PROBLEM)]
    restarts = [e for e in events if isinstance(e, AttemptRestarted)]
    assert len(restarts) == 1
    restart = restarts[0]
    assert (restart.round, restart.index, restart.attempt) == (1, 0, 2)
    assert restart.error.type == "EndpointConnectionError"
    at = events.index(restart)
    before = "".join(e.text for e in events[:at] if isinstance(e, TokenDelta) and e.field == "content")
    after = "".join(e.text for e in events[at:] if isinstance(e, TokenDelta) and e.field == "content")
    done = events[-1]
    assert isinstance(done, Done) and done.result.final is not None
    final = done.result.final
    assert final.content is not None
    assert before and before not in final.content  # the failed attempt's text is gone
    assert after == final.content  # the retry streamed the whole trajectory again
    assert final.attempts == 2


async def test_serve_streams_exactly_the_final_content_when_its_attempt_is_retried() -> None:
    for split in (False, True):
        async with upstream(SimConfig(seed=3, split_reasoning=split), stream=True) as (_, http):
            backend = DropsMidStream(http, lambda _, call: call in (3, 7))  # each final round's first try
            policy = RetryPolicy(max_attempts=3, sleep=FakeSleep())
            async with PacoreServer(backend, retry=policy) as server, aiohttp.ClientSession() as session:
                body = {"model": "pacore:[2]", "messages": [{"role": "user", "content": PROBLEM}], "seed": 1}
                async with session.post(f"{server.base_url}/chat/completions", json=body) as response:
                    plain = (await response.json())["choices"][0]["message"]
                async with session.post(
                    f"{server.base_url}/chat/completions", json={**body, "stream": True}
                ) as response:
                    lines = [line async for line in response.content]
        chunks = [json.loads(line[6:]) for line in lines if line.startswith(b"data: {")]
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        content = "".join(d.get("content") or "" for d in deltas)
        assert content == plain["content"]
        reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
        assert "[final round: attempt 2 restarts after EndpointConnectionError]" in reasoning


async def test_a_cut_call_is_charged_its_call_and_the_tokens_it_streamed() -> None:
    async with upstream(stream=True) as (_, http):

        class StallsMidStream(Raising):
            """Calls 3 and 4 stream half an answer, then stall; the others answer once they have."""

            stalled = 0

            async def generate(
                self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
            ) -> list[Completion]:
                self.calls += 1
                if self.calls not in (3, 4):
                    await wait_until(lambda: self.stalled == 2)
                    return await self.inner.generate(request, on_delta=on_delta)
                await self.stream_half(request, on_delta)
                self.stalled += 1
                await anyio.Event().wait()  # until the quorum cuts the call
                raise AssertionError("unreachable")

        backend = StallsMidStream(http, lambda *_: False)
        coordinator = Coordinator([4], backend, min_success=2, budget=Budget(max_calls=100))
        result = await coordinator.solve(PROBLEM)
    cut = [t for t in result.rounds[0].trajectories if t.status == "cancelled"]
    assert len(cut) == 2 and all(t.usage.completion_tokens > 0 for t in cut)
    used = result.info["budget_used"]
    assert used["calls"] == result.calls == 5
    assert used["tokens"] == result.usage.total_tokens  # the cut calls' streamed tokens included


# -- every fault kind of the simulated server, through solve_many and through pacore serve --------------

SPLICE_FREE = re.compile(r"\A<think>\n[^<]*\n</think>\n\nThe answer is \$\\boxed\{[^}]*\}\$\.\Z")
"""One whole simulated answer: a spliced retry would repeat ``<think>`` or cut the text."""


def _readable(message: str) -> bool:
    return bool(message.strip()) and "TaskGroup" not in message and "sub-exception" not in message


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_solve_many_under_each_fault_kind(kind: str) -> None:
    config = SimConfig(seed=3, faults=Faults(rates={kind: 0.2}, retry_after=2))
    # A stall ends at the client's timeout (real time: kept short); other kinds keep the default, so
    # a loaded machine does not add timeouts of its own. Eight attempts make a call that fails every
    # one of them (0.2 ** 8) practically impossible, so transient faults never fail a problem.
    timeout = {"timeout": 0.3} if kind == "stall" else {}
    async with upstream(config, stream=True, **timeout) as (_, http):
        coordinator = Coordinator([3], http, retry=RetryPolicy(max_attempts=8, sleep=FakeSleep()))
        results = await coordinator.solve_many([f"{PROBLEM} #{i}" for i in range(6)])
    assert len(results) == 6  # nothing lost: one outcome per problem
    trajectories = []
    for outcome in results:
        if isinstance(outcome, SolveError):
            assert _readable(str(outcome)) and type(outcome).__name__ in (
                "RoundFailedError",
                "BudgetExceeded",
            )
            trajectories += outcome.partial.trajectories
        else:
            assert isinstance(outcome, SolveResult) and outcome.answer
            trajectories += outcome.trajectories
    failed = [t for t in trajectories if t.status == "failed"]
    for trajectory in failed:
        assert trajectory.error is not None and trajectory.error.type.endswith("Error")
        assert _readable(trajectory.error.message)
    for trajectory in trajectories:
        if trajectory.ok:
            assert SPLICE_FREE.match(trajectory.content or ""), trajectory.content
    assert any(isinstance(r, SolveResult) for r in results)
    if kind not in ("bad_request", "context_length", "stream_context_length"):
        assert all(isinstance(r, SolveResult) for r in results)  # transient faults are retried away


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_serve_streaming_under_each_fault_kind(kind: str) -> None:
    # The final round's first attempt meets the fault (arrivals 0 and 1 are round 0's).
    config = SimConfig(seed=3, faults=Faults(script=[None, None, kind], retry_after=2))
    timeout = {"timeout": 0.3} if kind == "stall" else {}
    async with upstream(config, stream=True, **timeout) as (_, http):
        policy = RetryPolicy(max_attempts=3, sleep=FakeSleep())
        async with PacoreServer(http, retry=policy) as server, aiohttp.ClientSession() as session:
            body = {"model": "pacore:[2]", "messages": [{"role": "user", "content": PROBLEM}], "stream": True}
            async with session.post(f"{server.base_url}/chat/completions", json=body) as response:
                assert response.status == 200
                raw = await response.read()
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    errors = [c["error"] for c in chunks if "error" in c]
    if kind == "bad_request":  # not retried: the stream ends with a readable OpenAI-style error
        assert content == "" and len(errors) == 1
        assert set(errors[0]) == {"message", "type", "param", "code"} and _readable(errors[0]["message"])
        assert "RequestRejectedError" in errors[0]["message"] or "400" in errors[0]["message"]
        return
    assert errors == []
    assert SPLICE_FREE.match(content), content  # exactly one whole answer, never two spliced
    reasoning = "".join(
        c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c.get("choices")
    )
    assert "[final round: attempt 2 restarts after " in reasoning  # the fault did hit the final round
    finish = [c for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]
    summary = finish[-1]["pacore"]
    assert summary["rounds"][-1]["ok"] == 1
    assert summary["answer"] and summary["answer"] in content


async def test_serve_answers_a_bug_outside_any_call_with_a_500_body_that_leaks_nothing() -> None:
    def broken_order(trajectories: Any, rng: Any) -> list[int]:
        raise KeyError("secret-internal-detail")

    async with upstream() as (_, http):
        options = {"order": broken_order}
        async with (
            PacoreServer(http, coordinator_options=options) as server,
            aiohttp.ClientSession() as session,
        ):
            body = {"model": "pacore:[2]", "messages": [{"role": "user", "content": PROBLEM}]}
            async with session.post(f"{server.base_url}/chat/completions", json=body) as response:
                status, answer = response.status, await response.json()
            async with session.post(
                f"{server.base_url}/chat/completions", json={**body, "stream": True}
            ) as response:
                raw = (await response.read()).decode()
    assert status == 500 and answer["error"]["type"] == "server_error"
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"] == answer["error"]
    assert "secret-internal-detail" not in json.dumps(answer) + raw
