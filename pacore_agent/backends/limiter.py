"""`EndpointLimiter`: the concurrency limit of one endpoint, with paced starts.

Every request a backend sends holds one slot of its limiter, whoever sends it (every problem in flight,
the judge of `BestOfN`, the training rollout). Two things make it more than a semaphore:

- **Paced bursts.** Starting a request costs the client a millisecond or more of CPU (building and
  sending it) in one go; thousands started in the same event-loop iteration would stall every other
  task for seconds. Each iteration admits at most ``starts_per_tick`` new holders plus one for every
  slot given back in it: a burst is spread over iterations, while the steady state (a request starts
  as another ends) is never held back, however many requests end per iteration. (Capping all starts
  per iteration instead starves the endpoint once iterations grow long: at 256 in flight it cost 5-8%
  of the completion rate.)
- **No needless checkpoint.** A free slot is taken without yielding to the event loop (anyio's
  `CapacityLimiter` yields on every acquire). The request that follows yields soon enough, and at a
  thousand requests a second the extra loop round trip was a tenth of the coordinator's own CPU.

Waiters are served first come, first served, so problems started first finish first. The limiter
runs on asyncio (as pacore's HTTP clients do); waiters are bare asyncio futures, as in anyio's own
asyncio semaphore.
"""

from __future__ import annotations

import asyncio
import collections

from pacore_agent.exceptions import UsageError

__all__ = ["STARTS_PER_TICK", "EndpointLimiter", "starts_per_tick_for"]

STARTS_PER_TICK = 16
"""New requests (beyond replacements of ended ones) a limiter starts per event-loop iteration; fewer
(down to 4) for limits of thousands of requests in flight, whose bursts leave each iteration more I/O."""


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise UsageError(
            "pacore's backends run on asyncio: call them from asyncio.run() or anyio.run() (asyncio backend)"
        ) from None


def starts_per_tick_for(total: int) -> int:
    """The default pace of a limiter of ``total`` slots: 16 starts per iteration, 4 from 1024 slots."""
    return max(4, min(STARTS_PER_TICK, 4096 // total))


class EndpointLimiter:
    """At most ``total`` holders at once, admitted first come, first served, bursts spread out.

    Each event-loop iteration admits at most ``starts_per_tick`` holders plus one per slot released in
    it. Use it as ``async with limiter:`` around one request.

    Args:
        total: Slots: requests in flight at once.
        starts_per_tick: New admissions per event-loop iteration beyond replacements of released slots
            (default: `starts_per_tick_for`).
    """

    def __init__(self, total: int, starts_per_tick: int | None = None) -> None:
        if total <= 0:
            raise UsageError(f"a limiter needs at least one slot, got {total}")
        self.total = total
        self.starts_per_tick = starts_per_tick or starts_per_tick_for(total)
        self._borrowed = 0
        self._credit = self.starts_per_tick  # admissions left in this iteration
        self._tick_pending = False
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def borrowed_tokens(self) -> int:
        """Slots held now (requests in flight); named as anyio's `CapacityLimiter` names it."""
        return self._borrowed

    @property
    def waiting(self) -> int:
        """Holders waiting for a slot or for their turn."""
        return len(self._waiting)

    async def acquire(self) -> None:
        """Take a slot: at once when one is free and this iteration's admissions are not used up."""
        if not self._waiting and self._borrowed < self.total and self._credit > 0:
            self._take()
            return
        waiter: asyncio.Future[None] = _running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # the slot came as the wait was cancelled
                self.release()  # hand it on
            else:
                waiter.cancel()
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back; the first waiter gets it at once."""
        if self._borrowed <= 0:
            raise RuntimeError("EndpointLimiter.release() without a matching acquire()")
        self._borrowed -= 1
        self._credit += 1
        self._touch()
        self._admit()

    __aenter__ = acquire  # not a wrapper: one coroutine less per request

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"EndpointLimiter(total={self.total}, borrowed={self._borrowed}, waiting={len(self._waiting)})"

    def _take(self) -> None:
        self._borrowed += 1
        self._credit -= 1
        self._touch()

    def _touch(self) -> None:
        """This iteration's admissions changed: restore them when the next iteration starts."""
        if not self._tick_pending:
            _running_loop().call_soon(self._new_tick)
            self._tick_pending = True

    def _admit(self) -> None:
        while self._waiting and self._borrowed < self.total and self._credit > 0:
            waiter = self._waiting.popleft()
            if waiter.done():  # cancelled, its task not yet resumed to leave the line
                continue
            self._take()
            waiter.set_result(None)

    def _new_tick(self) -> None:
        self._tick_pending = False
        self._credit = self.starts_per_tick
        self._admit()
