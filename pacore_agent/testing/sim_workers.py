"""Simulated SGLang workers as processes, for tests and benchmarks behind a real SGLang router.

Each worker is ``pacore sim-server`` (the SIMULATED reasoning model, not a language model) in its own
process group, launched and stopped by the same code as a real SGLang server (`SGLangServer`): log file,
health wait on ``/health``, SIGTERM then SIGKILL. A test can kill one mid-run (`SimWorkerProcess.kill`)
and read each worker's counters (`SimWorkerProcess.stats`, ``GET /_sim/stats``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import anyio

from pacore_agent.backends.sglang.native import SGLangNativeClient
from pacore_agent.backends.sglang.process import SGLangServer, _kill_group

__all__ = ["SimWorkerProcess", "sim_workers"]


class SimWorkerProcess(SGLangServer):
    """One ``pacore sim-server`` process standing in for an SGLang worker.

    Args:
        *options: ``pacore sim-server`` options, e.g. ``"--capacity", "4", "--prefix-cache"``.
        env: Environment variables on top of this process's (e.g. ``PYTHONPATH``).
        startup_timeout: Seconds it may take to answer ``/health``.
    """

    label: ClassVar[str] = "simulated SGLang worker"

    def __init__(self, *options: str, env: Mapping[str, str] | None = None, startup_timeout: float = 60.0):
        super().__init__(
            "pacore-sim",
            command=(sys.executable, "-m", "pacore_agent.cli", "sim-server"),
            env=env,
            startup_timeout=startup_timeout,
            shutdown_timeout=5.0,
            health_generate=False,
        )
        self.options = tuple(options)

    @property
    def argv(self) -> tuple[str, ...]:
        """The launch command."""
        return (*self._program, "--host", self.host, "--port", str(self.port), *self.options)

    def kill(self) -> None:
        """SIGKILL the worker's process group at once, as a crashed node."""
        if self.pid is not None:
            _kill_group(self.pid)

    async def stats(self) -> dict[str, Any]:
        """The worker's counters (``GET /_sim/stats``, see `SimServer.stats`)."""
        async with SGLangNativeClient(self.base_url, timeout=10.0) as client:
            data = await client.get_json("/_sim/stats")
        assert isinstance(data, dict)
        return data


@contextlib.asynccontextmanager
async def sim_workers(
    count: int, *options: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[list[SimWorkerProcess]]:
    """Start ``count`` simulated workers at once (each with ``options`` and ``--worker-name wI``).

    Yields:
        The healthy workers; all are stopped on exit.
    """
    workers = [SimWorkerProcess(*options, "--worker-name", f"w{i}", env=env) for i in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        for worker in workers:
            stack.push_async_callback(worker.stop)
        async with anyio.create_task_group() as group:
            for worker in workers:
                group.start_soon(worker.start)
        yield workers
