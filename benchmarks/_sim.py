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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sim_server_process(*options: str) -> Iterator[str]:
    """Run ``pacore sim-server`` with ``options`` on a free port; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "pacore_agent.cli", "sim-server", "--port", str(port), *options]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


async def wait_healthy(backend: OpenAIBackend) -> None:
    """Wait until the server answers (it takes a second or two to start)."""
    with anyio.fail_after(60):
        while True:
            try:
                await backend.list_models()
                return
            except Exception:
                await anyio.sleep(0.1)
