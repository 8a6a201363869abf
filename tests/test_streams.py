"""Abandoning a library iterator early: the caller goes on, and no request keeps running upstream.

The upstream is the simulated server on loopback; its latency waits on an event that is never set, so
requests stay in flight until the client goes away (the server counts the disconnects).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from pacore_agent import Coordinator, Latency, OpenAIBackend, SelfConsistency, SimConfig, SimServer
from pacore_agent.results import RoundStarted
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio

PROBLEM = "Let $x$ be the number of primes below 20. Find $x$."


async def _forever(seconds: float) -> None:
    await anyio.Event().wait()


@asynccontextmanager
async def hanging(stream: bool = False) -> AsyncIterator[tuple[SimServer, OpenAIBackend]]:
    """An upstream whose every request waits until its client disconnects."""
    config = SimConfig(seed=3, latency=Latency(median=1.0))
    async with SimServer(config, sleep=_forever) as sim:
        async with OpenAIBackend(sim.base_url, "pacore-sim", stream=stream) as backend:
            yield sim, backend


@pytest.mark.parametrize("stream", [False, True])
async def test_breaking_out_of_stream_cancels_the_solve_not_the_caller(stream: bool) -> None:
    async with hanging(stream) as (sim, backend):
        coordinator = Coordinator([4], backend)
        with anyio.CancelScope() as caller:
            async for event in coordinator.stream(PROBLEM):
                assert isinstance(event, RoundStarted)
                await wait_until(lambda: sim.engine.in_flight == 4)
                break
            gc.collect()  # PyPy and friends: CPython drops the iterator at once anyway
            await wait_until(lambda: sim.engine.in_flight == 0)
            await anyio.lowlevel.checkpoint()  # the caller is not cancelled: it goes on awaiting
        assert not caller.cancel_called and not caller.cancelled_caught
        assert sim.engine.disconnects == 4


async def test_aclose_waits_until_the_requests_are_gone() -> None:
    async with hanging() as (sim, backend):
        async with Coordinator([4], backend).stream(PROBLEM) as events:
            async for _ in events:
                await wait_until(lambda: sim.engine.in_flight == 4)
                break
        await wait_until(lambda: sim.engine.disconnects == 4)  # the server's handlers wind down
        assert sim.engine.in_flight == 0


async def test_aclose_from_another_task_ends_the_consumers_loop_quietly() -> None:
    async with hanging() as (sim, backend):
        events = Coordinator([4], backend).stream(PROBLEM)
        seen: list[object] = []

        async def consume() -> None:
            async for event in events:  # ends without an error once closed elsewhere
                seen.append(event)

        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await wait_until(lambda: sim.engine.in_flight == 4)
            await events.aclose()
        assert [type(e) for e in seen] == [RoundStarted]
        await wait_until(lambda: sim.engine.in_flight == 0)


@pytest.mark.parametrize("which", ["coordinator", "strategy"])
async def test_breaking_out_of_solve_iter_cancels_the_other_solves(which: str) -> None:
    # One problem at a time: the first one's requests answer at once, the next one's hang.
    quick = 3 if which == "coordinator" else 2  # [2] plus the final round, or sc@2
    answered = 0

    async def sleep(seconds: float) -> None:
        nonlocal answered
        answered += 1
        if answered > quick:
            await anyio.Event().wait()

    config = SimConfig(seed=3, latency=Latency(median=1.0))
    async with SimServer(config, sleep=sleep) as sim:
        async with OpenAIBackend(sim.base_url, "pacore-sim") as backend:
            solver = Coordinator([2], backend) if which == "coordinator" else SelfConsistency(2, backend)
            problems = [PROBLEM, f"{PROBLEM} (2)", f"{PROBLEM} (3)"]
            with anyio.CancelScope() as caller:
                async for index, result in solver.solve_iter(problems, max_in_flight=1):
                    assert index == 0 and result.answer  # type: ignore[union-attr]
                    await wait_until(lambda: sim.engine.in_flight == 2)  # the next problem started
                    break
                await wait_until(lambda: sim.engine.in_flight == 0)
            assert not caller.cancel_called
            assert sim.engine.disconnects == 2


ONE_LINER = """
import asyncio, gc, sys
import anyio
from pacore_agent import Coordinator, SelfConsistency

async def main() -> None:
    result = await Coordinator(schedule=[32, 4]).solve("What is 6*7?")
    assert result.answer
    results = await Coordinator([2]).solve_many(["What is 1+1?", "What is 2+2?"])
    assert all(r.answer for r in results)
    async for event in Coordinator([4]).stream("What is 3*3?"):
        break  # abandoned early: the solve and its connections are closed
    await asyncio.sleep(0.1)  # the abandoned solve winds down in its own task
    assert (await SelfConsistency(3).solve("What is 5*5?")).answer

if sys.argv[1] == "asyncio":
    asyncio.run(main())
else:
    anyio.run(main)
gc.collect()
print("clean")
"""


@pytest.mark.parametrize("runner", ["asyncio", "anyio"])
async def test_the_one_liner_leaves_no_session_socket_or_warning(runner: str) -> None:
    import os
    import sys

    async with SimServer(SimConfig(seed=3)) as sim:
        env = {**os.environ, "PACORE_BASE_URL": sim.base_url, "PYTHONWARNINGS": "error"}
        done = await anyio.run_process(
            [sys.executable, "-W", "error", "-c", ONE_LINER, runner], env=env, check=False
        )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert done.stdout.decode().strip() == "clean"
    assert "Unclosed" not in stderr and "ResourceWarning" not in stderr and stderr == ""
