"""Async iterators whose producer runs in a task of its own.

An async generator that holds a task group across ``yield`` breaks when its consumer stops early:
Python closes an abandoned generator later, from another task, so the task group's cancel scope exits
in the wrong task ("Attempted to exit cancel scope in a different task"), the caller can receive a
stray cancellation, and the work the generator started keeps running. `BackgroundIterator` keeps the
producer (and its task groups) in its own task instead: the consumer's task never enters a cancel scope
of the producer, and the producer is cancelled as soon as the consumer lets go of the iterator (it is
dropped, ``aclose()``-d, or used with ``async with``), which closes the requests it had in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Self, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

__all__ = ["BackgroundIterator", "Producer"]

T = TypeVar("T")

Producer = Callable[[Callable[[T], Awaitable[None]]], Awaitable[None]]
"""Runs to completion, handing each item to the ``send`` function it is given."""

_RUNNING: set[asyncio.Task[None]] = set()
"""Strong references to producer tasks (the event loop keeps only weak ones)."""


@dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


class BackgroundIterator(Generic[T]):
    """Yields what ``produce`` sends; its errors are raised to the consumer as they are.

    The producer starts on the first ``__anext__``. Breaking out of ``async for`` early is safe: the
    producer is cancelled when the iterator is dropped; ``aclose()`` (or ``async with``) also waits
    until it has stopped.

    Args:
        produce: The producer, called once with the function that sends an item.
    """

    def __init__(self, produce: Producer[T]) -> None:
        self._produce = produce
        self._send, self._receive = anyio.create_memory_object_stream[T | _Failure](math.inf)
        self._task: asyncio.Task[None] | None = None
        self._finished = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._finished:
            raise StopAsyncIteration
        if self._task is None:
            # The task must not refer to this iterator: dropping the iterator is what cancels it.
            self._task = asyncio.get_running_loop().create_task(_run(self._produce, self._send))
            _RUNNING.add(self._task)
            self._task.add_done_callback(_RUNNING.discard)
        try:
            item = await self._receive.receive()
        except anyio.EndOfStream:
            self._finished = True
            self._receive.close()
            raise StopAsyncIteration from None
        if self._finished:  # closed by aclose() while this consumer waited: the stream just ends
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._finished = True
            self._receive.close()
            raise item.error
        return item

    async def aclose(self) -> None:
        """Stop the producer and wait until it has (its requests closed)."""
        self._finished = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
        self._receive.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        self._receive.close()
        task = self._task
        if task is None:
            self._send.close()
            return
        if task.done():
            return
        # Dropped while producing: the consumer stopped early. Cancel from the loop's own thread.
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            task.get_loop().call_soon_threadsafe(task.cancel)


async def _run(produce: Producer[T], send: MemoryObjectSendStream[T | _Failure]) -> None:
    try:
        await produce(send.send)
    except Exception as error:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            send.send_nowait(_Failure(error))
    except BaseException as error:
        # Cancelled from outside (the loop shutting down) or interrupted: a consumer still reading must
        # not mistake the end for a complete stream. (After aclose() or a drop nobody reads it.)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            send.send_nowait(_Failure(error))
        raise
    finally:
        send.close()
