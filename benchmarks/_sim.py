"""A simulated server in its own process, for benchmarks (the client then has a core to itself)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from pacore_agent import OpenAIBackend


def lattice_problems(count: int) -> list[str]:
    """``count`` distinct problems of the benchmarks (distinct prompts, so no cache serves one for another)."""
    return [
        f"Problem {i}: how many lattice points lie on the circle x^2 + y^2 = {5**i}?" for i in range(count)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def pacore_process(command: str, *options: str) -> Iterator[str]:
    """Run ``pacore COMMAND OPTIONS`` serving on a free port, in a process group of its own; yields its
    base URL, and stops the group on exit."""
    port = free_port()
    argv = [sys.executable, "-m", "pacore_agent.cli", command, "--port", str(port), *options]
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


@contextmanager
def sim_server_process(*options: str) -> Iterator[str]:
    """Run ``pacore sim-server`` with ``options`` on a free port; yields its base URL."""
    with pacore_process("sim-server", *options) as url:
        yield url


async def wait_healthy(backend: OpenAIBackend) -> None:
    """Wait until the server answers (it takes a second or two to start)."""
    with anyio.fail_after(60):
        while True:
            try:
                await backend.list_models()
                return
            except Exception:
                await anyio.sleep(0.1)
