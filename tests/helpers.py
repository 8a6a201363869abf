"""Small helpers for async tests."""

from __future__ import annotations

import socket
from collections.abc import Callable

import anyio


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition that another task makes true (bounded, so a bug fails instead of hanging)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.002)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeSleep:
    """An injected sleep that records durations and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.lowlevel.checkpoint()
