"""`EndpointLimiter`: slots, first come first served, starts paced by (injected) loop time, cancellation."""

from __future__ import annotations

import asyncio

import anyio
import anyio.lowlevel
import pytest

from pacore_agent.backends.limiter import EndpointLimiter
from pacore_agent.exceptions import UsageError

pytestmark = pytest.mark.anyio


class _Clock:
    """Fake monotonic seconds: moves only when a test says so (as a request's CPU would move it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _unpaced(total: int) -> EndpointLimiter:
    """A limiter whose slice is never spent (its clock stands still)."""
    return EndpointLimiter(total, clock=_Clock())


async def _settle(iterations: int = 10) -> None:
    for _ in range(iterations):
        await anyio.lowlevel.checkpoint()


def _two_waiters(limiter: EndpointLimiter, got: list[str]) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    """Tasks "first" and "second", each taking the slot in turn and recording its name in ``got``."""

    async def waiter(name: str) -> None:
        async with limiter:
            got.append(name)

    return asyncio.create_task(waiter("first")), asyncio.create_task(waiter("second"))


async def test_at_most_total_holders_served_in_arrival_order() -> None:
    limiter = _unpaced(2)
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
    """Each start costs 4 ms of (fake) CPU and the slice is 10 ms: three starts per iteration (the
    third begins at 8 ms, inside the slice), whatever the count waiting."""
    clock = _Clock()
    limiter = EndpointLimiter(1000, time_slice=0.01, clock=clock)
    iterations, started, order = _Iterations(), [], []
    done = anyio.Event()

    async def request(name: int) -> None:
        async with limiter:
            started.append(iterations.count)
            order.append(name)
            clock.now += 0.004
            await done.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(iterations.run)
        for name in range(12):
            group.start_soon(request, name)
        await _settle(40)
        done.set()
        await _settle()
        group.cancel_scope.cancel()
    per_iteration = [started.count(i) for i in sorted(set(started))]
    assert len(started) == 12 and max(per_iteration) == 3 and len(per_iteration) == 4
    assert order == list(range(12))  # those sent back by a spent slice keep their place


async def test_a_thousand_slots_fill_within_a_bounded_number_of_iterations() -> None:
    """Limit 1,024 with 1,024 requests queued: more than 900 in flight within 40 loop iterations
    (starts cost 0.1 ms of fake CPU, a 10 ms slice holds about 100), and no iteration starts more
    than its slice allows."""
    clock = _Clock()
    limiter = EndpointLimiter(1024, time_slice=0.01, clock=clock)
    iterations, started = _Iterations(), []
    in_flight_at: dict[int, int] = {}
    done = anyio.Event()

    async def request() -> None:
        async with limiter:
            started.append(iterations.count)
            clock.now += 0.0001
            await done.wait()

    async def watch() -> None:
        while True:
            in_flight_at[iterations.count] = limiter.borrowed_tokens
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        group.start_soon(iterations.run)
        group.start_soon(watch)
        for _ in range(1024):
            group.start_soon(request)
        await _settle(40)
        assert limiter.borrowed_tokens > 900
        assert max(count for iteration, count in in_flight_at.items() if iteration <= 40) > 900
        done.set()
        await _settle()
        group.cancel_scope.cancel()
    per_iteration = [started.count(i) for i in set(started)]
    assert len(started) == 1024 and max(per_iteration) <= 101


async def test_replacements_are_not_held_back() -> None:
    """A slot given back goes to the next waiter at once, even when the iteration's new starts are
    used up: the steady state runs at full width however many requests end per iteration."""
    clock = _Clock()
    limiter = EndpointLimiter(4, time_slice=0.01, clock=clock)
    for _ in range(4):  # fill every slot, over four iterations
        await limiter.acquire()
        clock.now += 1.0  # each start spends the whole slice
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
    limiter = _unpaced(1)
    await limiter.acquire()
    with anyio.move_on_after(0):
        await limiter.acquire()
    assert limiter.waiting == 0 and limiter.borrowed_tokens == 1
    limiter.release()
    assert limiter.borrowed_tokens == 0


async def test_a_waiter_cancelled_in_line_leaves_it() -> None:
    limiter = _unpaced(1)
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
    limiter = _unpaced(1)
    got: list[str] = []
    await limiter.acquire()
    first, second = _two_waiters(limiter, got)
    await _settle()
    assert limiter.waiting == 2
    limiter.release()  # the slot goes to "first"...
    first.cancel()  # ...whose task is cancelled before it resumes
    await _settle()
    second.cancel()  # a no-op when it finished, as it should have
    await asyncio.gather(first, second, return_exceptions=True)
    assert first.cancelled() and got == ["second"] and limiter.borrowed_tokens == 0


async def test_a_woken_waiter_cancelled_before_it_runs_frees_its_turn() -> None:
    """A waiter woken to try the slice, then cancelled before its task ran: the slot kept for it
    goes to the next waiter."""
    limiter = _unpaced(1)
    got: list[str] = []
    await limiter.acquire()
    limiter.release()  # in flight nobody: the next iteration wakes the line
    first, second = _two_waiters(limiter, got)
    await anyio.lowlevel.checkpoint()  # both queue (the slot's release credit went to nobody)
    first.cancel()
    await _settle()
    await asyncio.gather(first, second, return_exceptions=True)
    assert got in (["second"], ["first", "second"]) and limiter.borrowed_tokens == 0
    assert limiter.waiting == 0


async def test_misuse_is_an_error() -> None:
    with pytest.raises(UsageError, match="at least one slot"):
        EndpointLimiter(0)
    with pytest.raises(UsageError, match="time_slice"):
        EndpointLimiter(1, time_slice=0)
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        EndpointLimiter(1).release()


def test_outside_asyncio_is_a_clear_error() -> None:
    limiter = EndpointLimiter(1)
    with pytest.raises(UsageError, match="run on asyncio"):
        limiter.acquire().send(None)
