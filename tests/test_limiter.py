"""`EndpointLimiter`: slots, first come first served, paced starts, cancellation."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from pacore_agent.backends.limiter import EndpointLimiter, starts_per_tick_for
from pacore_agent.exceptions import UsageError

pytestmark = pytest.mark.anyio


async def _settle(iterations: int = 10) -> None:
    for _ in range(iterations):
        await anyio.lowlevel.checkpoint()


async def test_at_most_total_holders_served_in_arrival_order() -> None:
    limiter = EndpointLimiter(2, starts_per_tick=100)
    holding, peak, order = 0, 0, []
    release = anyio.Event()

    async def holder(name: int) -> None:
        nonlocal holding, peak
        async with limiter:
            order.append(name)
            holding += 1
            peak = max(peak, holding)
            await release.wait()
            await anyio.lowlevel.checkpoint()
            holding -= 1

    async with anyio.create_task_group() as group:
        for name in range(6):
            group.start_soon(holder, name)
        await _settle()
        assert limiter.borrowed_tokens == 2 and limiter.waiting == 4
        release.set()
    assert peak == 2 and order == list(range(6)) and limiter.borrowed_tokens == 0


async def test_a_free_slot_is_taken_without_yielding() -> None:
    limiter = EndpointLimiter(4)
    ran = False

    async def other() -> None:
        nonlocal ran
        ran = True

    async with anyio.create_task_group() as group:
        group.start_soon(other)
        await limiter.acquire()
        assert not ran  # no checkpoint: the other task has not had the loop yet
        limiter.release()


class _Iterations:
    """Counts event-loop iterations (a task that wakes once per iteration)."""

    def __init__(self) -> None:
        self.count = 0

    async def run(self) -> None:
        while True:
            await anyio.lowlevel.checkpoint()
            self.count += 1


async def test_a_burst_is_spread_over_loop_iterations() -> None:
    limiter = EndpointLimiter(1000, starts_per_tick=3)
    iterations, started = _Iterations(), []
    done = anyio.Event()

    async def request() -> None:
        async with limiter:
            started.append(iterations.count)
            await done.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(iterations.run)
        for _ in range(12):
            group.start_soon(request)
        await _settle(20)
        done.set()
        await _settle()
        group.cancel_scope.cancel()
    per_iteration = [started.count(i) for i in set(started)]
    assert len(started) == 12 and max(per_iteration) == 3 and len(per_iteration) == 4


async def test_replacements_are_not_held_back() -> None:
    """A slot given back goes to the next waiter at once, even when the iteration's new starts are
    used up: the steady state runs at full width however many requests end per iteration."""
    limiter = EndpointLimiter(4, starts_per_tick=1)
    for _ in range(4):  # fill every slot, over four iterations
        await limiter.acquire()
        await anyio.lowlevel.checkpoint()
    admitted: list[int] = []

    async def waiter(name: int) -> None:
        await limiter.acquire()
        admitted.append(name)

    async with anyio.create_task_group() as group:
        for name in range(4):
            group.start_soon(waiter, name)
        await _settle(2)
        assert limiter.waiting == 4
        for _ in range(4):  # four requests end in the same iteration...
            limiter.release()
        await anyio.lowlevel.checkpoint()  # ...and their four replacements start in the next one
        assert admitted == [0, 1, 2, 3]
    assert limiter.borrowed_tokens == 4


async def test_cancelled_waiter_leaves_the_line() -> None:
    limiter = EndpointLimiter(1, starts_per_tick=100)
    await limiter.acquire()
    with anyio.move_on_after(0):
        await limiter.acquire()
    assert limiter.waiting == 0 and limiter.borrowed_tokens == 1
    limiter.release()
    assert limiter.borrowed_tokens == 0


async def test_a_waiter_cancelled_in_line_leaves_it() -> None:
    limiter = EndpointLimiter(1, starts_per_tick=100)
    got: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}

    async def waiter(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            async with limiter:
                got.append(name)

    await limiter.acquire()
    async with anyio.create_task_group() as group:
        group.start_soon(waiter, "first")
        group.start_soon(waiter, "second")
        await _settle()
        assert limiter.waiting == 2
        scopes["first"].cancel()
        limiter.release()
    assert got == ["second"] and limiter.borrowed_tokens == 0 and limiter.waiting == 0


async def test_a_slot_granted_to_a_cancelled_task_is_handed_on() -> None:
    """The slot was granted, then the task was cancelled before it ran again: it must not keep it."""
    limiter = EndpointLimiter(1, starts_per_tick=100)
    got: list[str] = []

    async def waiter(name: str) -> None:
        async with limiter:
            got.append(name)

    await limiter.acquire()
    first = asyncio.create_task(waiter("first"))
    second = asyncio.create_task(waiter("second"))
    await _settle()
    assert limiter.waiting == 2
    limiter.release()  # the slot goes to "first"...
    first.cancel()  # ...whose task is cancelled before it resumes
    await _settle()
    second.cancel()  # a no-op when it finished, as it should have
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled() and got == ["second"] and limiter.borrowed_tokens == 0


async def test_misuse_is_an_error() -> None:
    with pytest.raises(UsageError, match="at least one slot"):
        EndpointLimiter(0)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        EndpointLimiter(1).release()


def test_outside_asyncio_is_a_clear_error() -> None:
    limiter = EndpointLimiter(1)
    with pytest.raises(UsageError, match="run on asyncio"):
        limiter.acquire().send(None)


def test_default_pace() -> None:
    assert starts_per_tick_for(256) == 16
    assert starts_per_tick_for(1024) == 4
    assert starts_per_tick_for(10_000) == 4
