"""Process-level settings for runs with thousands of trajectories in flight.

With ten thousand requests in flight the client holds millions of live objects (tasks, requests,
connections, bodies). CPython's default collector thresholds (700, 10, 10) then run full collections
that traverse all of them again and again: on a 2-core machine they took about 40% of the client's CPU
and paused the event loop for up to 1.5 s (``benchmarks/memory.py``). `tune_gc` raises the youngest
generation's threshold so collections run far less often; the ``pacore`` commands call it, and
library users running large batches can too. It never disables the collector.
"""

from __future__ import annotations

import gc

__all__ = ["HIGH_CONCURRENCY_GC", "tune_gc"]

HIGH_CONCURRENCY_GC = (50_000, 20, 100)
"""Collector thresholds for many requests in flight (CPython's defaults are (700, 10, 10))."""


def tune_gc(thresholds: tuple[int, int, int] = HIGH_CONCURRENCY_GC) -> tuple[int, int, int]:
    """Raise the garbage collector's thresholds for high concurrency.

    Args:
        thresholds: The new ``gc.set_threshold`` values.

    Returns:
        The previous thresholds, to restore them with ``gc.set_threshold(*previous)``.
    """
    previous = gc.get_threshold()
    gc.set_threshold(*thresholds)
    return previous
