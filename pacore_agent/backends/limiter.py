"""`EndpointLimiter`: the concurrency limit of one endpoint, with starts paced by loop time.

Every request a backend sends holds one slot of its limiter, whoever sends it (every problem in flight,
the judge of `BestOfN`, the training rollout). Two things make it more than a semaphore:

- **Starts paced by time, not by count.** Starting a request costs the client CPU (building and
  sending it) in one go; thousands started in the same event-loop iteration would stall every other
  task for seconds. So each iteration admits new holders only until ``time_slice`` seconds of the
  loop thread's CPU time have gone by since its first admission; the rest start in the following
  iterations. CPU time, not wall time: on a shared machine the process is often descheduled, and a
  wall-clock slice spent waiting for a core admitted almost nobody. A slot given back is
  refilled at once, outside the slice, so the steady state (a request starts as another ends) is never
  held back however many requests end per iteration. Pacing by time fills the endpoint as fast as the
  client can build requests: a fixed count per iteration (4 at limits of 1,024) starved it once
  iterations grew long with answers to read (only about 300 of 1,024 slots were ever held).
- **No needless checkpoint.** A free slot is taken without yielding to the event loop (anyio's
  `CapacityLimiter` yields on every acquire). The request that follows yields soon enough, and at a
  thousand requests a second the extra loop round trip was a tenth of the coordinator's own CPU.

A waiter woken for a free slot checks the slice itself when its task runs (that is when its start
costs CPU); if the slice is spent it goes back to the front of the line. How many are woken per
iteration follows how many fitted last time, so a burst wakes few in vain. Waiters are served first
come, first served, so problems started first finish first. The limiter runs on asyncio (as pacore's
HTTP clients do); waiters are bare asyncio futures, as in anyio's own asyncio semaphore.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from pacore_agent.exceptions import UsageError

__all__ = ["DEFAULT_TIME_SLICE", "EndpointLimiter"]

DEFAULT_TIME_SLICE = 0.005
"""CPU seconds of one event-loop iteration that new starts may take (replacements of ended requests are
not counted). `benchmarks/memory.py` (10,016 requests at once) sends in about 8 s with a loop lag p99
of 32 ms at 5 ms; at 10 ms it sent in 4-5 s but its lag p99 was 44-70 ms, over the 50 ms target."""

_GRANTED = True  # the waiter's slot is taken for it (a replacement): no slice check
_TRY = False  # a slot is kept for the waiter; it takes it if the slice allows when it runs

_FIRST_BATCH = 16


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise UsageError(
            "pacore's backends run on asyncio: call them from asyncio.run() or anyio.run() (asyncio backend)"
        ) from None


class EndpointLimiter:
    """At most ``total`` holders at once, admitted first come, first served, bursts paced by time.

    New holders are admitted in an event-loop iteration until ``time_slice`` CPU seconds have passed since
    the iteration's first admission; a holder replacing one that released its slot is admitted at once.
    Use it as ``async with limiter:`` around one request.

    Args:
        total: Slots: requests in flight at once.
        time_slice: CPU seconds of each loop iteration that new starts may use.
        clock: Seconds of the loop thread's CPU time (`time.thread_time`); injectable for tests.
    """

    def __init__(
        self,
        total: int,
        *,
        time_slice: float = DEFAULT_TIME_SLICE,
        clock: Callable[[], float] = time.thread_time,
    ) -> None:
        if total <= 0:
            raise UsageError(f"a limiter needs at least one slot, got {total}")
        if not time_slice > 0:
            raise UsageError(f"a limiter's time_slice must be positive seconds, got {time_slice!r}")
        self.total = total
        self.time_slice = time_slice
        self._clock = clock
        self._borrowed = 0
        self.peak = 0
        """The most slots held at once so far."""
        self._kept = 0  # slots kept for woken waiters whose tasks have not run yet
        self._credit = 0  # slots given back in this iteration: refilled outside the slice
        self._slice_start: float | None = None  # first admission of this iteration
        self._batch = _FIRST_BATCH  # waiters to wake at the next iteration
        self._fitted = 0  # woken waiters that got in during this iteration
        self._deferred = 0  # woken waiters sent back to the front of the line in this iteration
        self._tick_pending = False
        self._waiting: collections.deque[asyncio.Future[bool]] = collections.deque()

    @property
    def borrowed_tokens(self) -> int:
        """Slots held now (requests in flight); named as anyio's `CapacityLimiter` names it."""
        return self._borrowed

    @property
    def waiting(self) -> int:
        """Holders waiting for a slot or for their turn."""
        return len(self._waiting) + self._kept

    async def acquire(self) -> None:
        """Take a slot: at once when one is free, nobody waits, and this iteration's slice is not spent."""
        if not self._waiting and not self._kept and self._borrowed < self.total and self._may_start():
            self._take()
            return
        loop = _running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiting.append(waiter)
        while True:
            try:
                granted = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():  # a slot came as the wait was cancelled
                    if waiter.result() is _GRANTED:
                        self.release()  # hand it on
                    else:
                        self._kept -= 1
                        self._touch()  # the next iteration wakes someone else
                else:
                    waiter.cancel()
                    if waiter in self._waiting:
                        self._waiting.remove(waiter)
                raise
            if granted:
                return
            self._kept -= 1
            if self._may_start():
                self._fitted += 1
                self._take()
                return
            # The slice is spent: back to the front of the line, behind those sent back before it.
            waiter = loop.create_future()
            self._waiting.insert(min(self._deferred, len(self._waiting)), waiter)
            self._deferred += 1
            self._touch()

    def release(self) -> None:
        """Give a slot back; the first waiter gets it at once."""
        if self._borrowed <= 0:
            raise RuntimeError("EndpointLimiter.release() without a matching acquire()")
        self._borrowed -= 1
        self._credit += 1
        self._touch()
        self._grant()

    __aenter__ = acquire  # not a wrapper: one coroutine less per request

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"EndpointLimiter(total={self.total}, borrowed={self._borrowed}, waiting={self.waiting})"

    def _may_start(self) -> bool:
        """Whether a new holder may start now: a slot given back in this iteration, or slice time left."""
        if self._credit > 0:
            self._credit -= 1
            return True
        now = self._clock()
        if self._slice_start is None:
            self._slice_start = now
            return True  # the caller takes the slot, which schedules the next iteration's slice
        return now - self._slice_start < self.time_slice

    def _take(self) -> None:
        self._borrowed += 1
        if self._borrowed > self.peak:
            self.peak = self._borrowed
        self._touch()

    def _touch(self) -> None:
        """This iteration's admissions changed: start a new slice when the next iteration starts."""
        if not self._tick_pending:
            _running_loop().call_soon(self._new_tick)
            self._tick_pending = True

    def _grant(self) -> None:
        """Hand the credits of released slots to waiters, taking their slots for them."""
        while self._waiting and self._credit > 0 and self._borrowed + self._kept < self.total:
            waiter = self._waiting.popleft()
            if waiter.done():  # cancelled, its task not yet resumed to leave the line
                continue
            self._credit -= 1
            self._borrowed += 1  # a replacement: never above the peak so far
            waiter.set_result(_GRANTED)

    def _admit(self) -> None:
        """Wake up to this iteration's batch of waiters, each to check the slice when it runs."""
        self._grant()
        woken = 0
        while self._waiting and woken < self._batch and self._borrowed + self._kept < self.total:
            waiter = self._waiting.popleft()
            if waiter.done():
                continue
            self._kept += 1
            woken += 1
            waiter.set_result(_TRY)

    def _new_tick(self) -> None:
        self._tick_pending = False
        if self._deferred:  # the last batch overflowed the slice: wake as many as fitted
            self._batch = max(1, self._fitted)
        elif self._fitted >= self._batch:  # it all fitted: try twice as many
            self._batch = min(self._batch * 2, self.total)
        self._fitted = self._deferred = 0
        self._credit = 0
        self._slice_start = None
        self._admit()
