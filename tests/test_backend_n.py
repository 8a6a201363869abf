"""Servers that ignore ``n``: the remaining completions run concurrently, each holding a slot of its own."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from pacore_agent import OpenAIBackend, SimConfig, SimServer
from pacore_agent.backends.base import GenerationRequest
from pacore_agent.backends.sim import Faults
from pacore_agent.exceptions import RequestRejectedError
from pacore_agent.retry import RetryPolicy, call_with_retries
from tests.helpers import FakeSleep

pytestmark = pytest.mark.anyio


def request(n: int, problem: str = "Find the remainder of 2^10 by 7.") -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": problem}], n=n)


async def overlapping(seconds: float) -> None:
    """The server's latency: a few loop turns (no real time), so that concurrent requests overlap."""
    for _ in range(20):
        await asyncio.sleep(0)


def ignoring_n(faults: Faults | None = None) -> SimServer:
    config = SimConfig(seed=3, honour_n=False, faults=faults or Faults())
    return SimServer(config, sleep=overlapping)


async def test_the_rest_run_concurrently_each_in_a_slot() -> None:
    async with (
        ignoring_n() as server,
        OpenAIBackend(server.base_url, "pacore-sim", max_concurrency=8) as backend,
    ):
        call = await call_with_retries(backend, request(4), RetryPolicy(sleep=FakeSleep()))
        assert backend.supports_n is False
        assert len(call.completions) == 4 and len({c.content for c in call.completions}) == 4
        assert len(server.engine.requests) == 4 and all("n" not in b for b in server.engine.requests[1:])
        # The first answer had one choice; the three others were in flight together.
        assert server.engine.max_in_flight == 3
        server.engine.reset_stats()
        again = await call_with_retries(backend, request(5), RetryPolicy(sleep=FakeSleep()))
        assert len(again.completions) == 5 and server.engine.max_in_flight == 5  # known now: all at once
        assert backend.limiter.borrowed_tokens == 0


async def test_slots_bound_them_and_callers_never_wait_on_each_other() -> None:
    # Four callers on two slots, each wanting four completions from a server that answers one: every
    # caller holds a slot while it needs more; waiting for them while holding would deadlock.
    async with (
        ignoring_n() as server,
        OpenAIBackend(server.base_url, "pacore-sim", max_concurrency=2) as backend,
    ):
        calls = []

        async def one(index: int) -> None:
            calls.append(await call_with_retries(backend, request(4, f"problem {index}"), RetryPolicy()))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for index in range(4):
                    group.start_soon(one, index)
        assert [len(c.completions) for c in calls] == [4, 4, 4, 4]
        assert server.engine.max_in_flight <= 2 and backend.limiter.borrowed_tokens == 0


async def test_a_failed_remaining_completion_raises_its_own_error() -> None:
    faults = Faults(script=[None, None, "bad_request"])
    async with ignoring_n(faults=faults) as server:
        async with OpenAIBackend(server.base_url, "pacore-sim", max_concurrency=4) as backend:
            with pytest.raises(RequestRejectedError):  # not an ExceptionGroup
                await call_with_retries(backend, request(3), RetryPolicy(sleep=FakeSleep()))
            assert backend.limiter.borrowed_tokens == 0
