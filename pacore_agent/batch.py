"""Many problems at once.

`solve_each` runs a solve per conversation and yields each result as it finishes; `collect` puts them
back in problem order.

A problem's failure is its own: whatever one solve raises (a `SolveError` with its partial result, or
anything unexpected) becomes that problem's `SolveError`, and every other problem still gets its result.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import anyio

from pacore_agent.background import BackgroundIterator
from pacore_agent.exceptions import SolveError, UsageError
from pacore_agent.prompts import Messages
from pacore_agent.results import SolveResult

__all__ = ["collect", "solve_each"]


def solve_each(
    solve: Callable[[Messages], Awaitable[SolveResult]],
    conversations: Sequence[Messages],
    max_in_flight: int | None = None,
    *,
    method: str = "unknown",
    session: Callable[[], AbstractAsyncContextManager[None]] | None = None,
) -> BackgroundIterator[tuple[int, SolveResult | SolveError]]:
    """Run ``solve`` on every conversation concurrently, yielding ``(index, result)`` as each finishes.

    Args:
        solve: Solves one conversation.
        conversations: The problems, normalized.
        max_in_flight: Solves running at once (default: all).
        method: The method label recorded in the partial result of a solve that failed unexpectedly.
        session: Held around the whole batch (`Coordinator.in_use`: connections stay open throughout).

    A failed solve yields its `SolveError` (with ``.partial``); the others are unaffected. Stopping
    early (``break``) cancels the solves still running.
    """
    if max_in_flight is not None and (isinstance(max_in_flight, bool) or max_in_flight < 1):
        raise UsageError(f"max_in_flight must be at least 1, got {max_in_flight}")
    gate = anyio.CapacityLimiter(max_in_flight or max(len(conversations), 1))

    async def produce(send: Callable[[tuple[int, SolveResult | SolveError]], Awaitable[None]]) -> None:
        async def one(index: int, messages: Messages) -> None:
            async with gate:
                try:
                    result: SolveResult | SolveError = await solve(messages)
                except SolveError as error:
                    result = error
                except Exception as error:  # one problem's failure must never lose the others
                    result = unexpected_failure(error, messages, method)
            await send((index, result))

        async with session() if session else contextlib.nullcontext(), anyio.create_task_group() as group:
            for index, messages in enumerate(conversations):
                group.start_soon(one, index, messages)

    return BackgroundIterator(produce)


def unexpected_failure(error: Exception, messages: Messages, method: str) -> SolveError:
    """A `SolveError` for a solve that raised something else: its type and message, readable."""
    failure = SolveError(
        f"{type(error).__name__}: {error}" if str(error) else type(error).__name__,
        partial=SolveResult(method=method, problem=messages),
    )
    failure.__cause__ = error
    return failure


async def collect(
    results: AsyncIterator[tuple[int, SolveResult | SolveError]], count: int
) -> list[SolveResult | SolveError]:
    """The results of `solve_each` in problem order."""
    ordered: list[SolveResult | SolveError | None] = [None] * count
    async for index, result in results:
        ordered[index] = result
    return [r for r in ordered if r is not None]
