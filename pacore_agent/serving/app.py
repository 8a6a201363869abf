"""The serving plumbing shared by pacore's HTTP servers (the PaCoRe server and the test doubles)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from aiohttp import web

__all__ = ["AppServer"]


LISTEN_BACKLOG = 2048
"""Pending connections the listening socket queues (uvicorn's default)."""


class AppServer:
    """An aiohttp application served on ``host``:``port`` as an async context manager.

    Args:
        app: The application.
        host: Interface to bind.
        port: Port; 0 picks a free one (``port`` holds the real one once started).
        runner_options: Options of `aiohttp.web.AppRunner` (e.g. ``handler_cancellation``).
    """

    def __init__(
        self, app: web.Application, *, host: str, port: int, runner_options: dict[str, Any] | None = None
    ):
        self.app = app
        self.host = host
        self.port = port
        self._runner_options = {"access_log": None, **(runner_options or {})}
        self._runner: web.AppRunner | None = None

    @property
    def root_url(self) -> str:
        """``http://host:port`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving."""
        runner = web.AppRunner(self.app, **self._runner_options)
        await runner.setup()
        try:
            # uvicorn's backlog, which SGLang and vLLM serve through; aiohttp's default (128) drops the
            # SYNs of a burst of a thousand new connections, and the kernel resends them a second later.
            await web.TCPSite(runner, self.host, self.port, backlog=LISTEN_BACKLOG).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:
            self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving and close connections. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
