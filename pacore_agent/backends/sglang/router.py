"""SGLang's router in front of several workers: launch, health wait, logs and shutdown.

`SGLangRouter` runs ``python -m sglang_router.launch_router`` (``pip install 'pacore[router]'``: a Rust
load balancer that runs on a CPU) in front of SGLang servers that are already running, e.g. one per GPU
on a single box. It is an `SGLangServer` whose program is the router: the process group, the log file,
the death checks and the SIGTERM-then-SIGKILL shutdown are the same code. Start-up waits until the router
lists every worker as healthy on ``GET /workers`` (the router itself answers ``/health`` at once, before
any worker is registered).

Clients then use the router's URL as they would a server's: ``OpenAIBackend(f"{router.base_url}/v1")``,
``SGLangBackend.attach(router.base_url)`` (chat and the native ``/generate``), or ``pacore solve
--base-url http://ROUTER/v1``. Many nodes use the documented commands instead (see the README).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pacore_agent.backends.sglang.native import SGLangNativeClient
from pacore_agent.backends.sglang.process import (
    DEFAULT_HOST,
    DEFAULT_SHUTDOWN_TIMEOUT,
    SGLangServer,
    SGLangServerError,
    _free_port,
)
from pacore_agent.exceptions import BackendError, UsageError

__all__ = ["DEFAULT_ROUTER_STARTUP_TIMEOUT", "ROUTER_POLICIES", "RouterPolicy", "SGLangRouter"]

RouterPolicy = Literal["cache_aware", "round_robin", "random", "power_of_two"]
ROUTER_POLICIES: tuple[str, ...] = ("cache_aware", "round_robin", "random", "power_of_two")
"""The router's ``--policy`` choices for plain (not prefill/decode) workers."""

DEFAULT_ROUTER_STARTUP_TIMEOUT = 60.0
"""Seconds the router may take until every worker is healthy (the workers are already running)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class SGLangRouter(SGLangServer):
    """``sglang_router.launch_router`` in front of running workers, as an async context manager.

    Example::

        async with SGLangRouter(["http://10.0.0.1:30000", "http://10.0.0.2:30000"]) as router:
            backend = OpenAIBackend(f"{router.base_url}/v1")

    Args:
        worker_urls: Root URLs of the SGLang workers (``http://host:port``); a trailing ``/v1`` is dropped.
        policy: ``--policy``: ``cache_aware`` (default: requests sharing a prompt prefix go to the same
            worker, whose prefix cache then serves it, unless the load is too uneven), ``round_robin``,
            ``random`` or ``power_of_two``.
        host: ``--host``.
        port: ``--port``; a free port is picked when ``None``.
        health_check_interval: ``--health-check-interval-secs``: how often the router probes each
            worker's ``/health`` (whole seconds, at least 1).
        health_failure_threshold: ``--health-failure-threshold``: failed probes before a worker is
            taken out of rotation.
        retries: ``--retry-max-retries``: attempts the router makes on another worker for a request
            whose worker failed.
        api_key: ``--api-key``: clients must send it to the router, which sends it on to the workers
            (give them the same key). Never logged.
        min_healthy: Workers that must be healthy for `start` to return (default: all of them).
        extra_args: More ``launch_router`` arguments, passed as they are.
        python_executable: The interpreter that has ``sglang-router`` installed (default: this one).
        env: Environment variables set for the router on top of this process's environment.
        log_path: Where the router's output goes (appended); a new temporary file when ``None``.
        startup_timeout: Seconds until the workers must be healthy.
        shutdown_timeout: Seconds between SIGTERM and SIGKILL on `stop`.

    Raises:
        UsageError: No worker, a worker URL that is not http(s), an unknown policy or bad numbers.
    """

    label: ClassVar[str] = "SGLang router"

    def __init__(
        self,
        worker_urls: Sequence[str],
        *,
        policy: RouterPolicy = "cache_aware",
        host: str = DEFAULT_HOST,
        port: int | None = None,
        health_check_interval: int = 10,
        health_failure_threshold: int = 3,
        retries: int = 5,
        api_key: str | None = None,
        min_healthy: int | None = None,
        extra_args: Sequence[str] = (),
        python_executable: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = DEFAULT_ROUTER_STARTUP_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        if isinstance(worker_urls, str) or not worker_urls:
            raise UsageError("worker_urls must be a non-empty list of URLs like ['http://127.0.0.1:30000']")
        workers = tuple(url.rstrip("/").removesuffix("/v1") for url in worker_urls)
        for url in workers:
            if not re.match(r"^https?://[^/]+$", url):
                raise UsageError(f"worker_urls must hold root URLs like http://127.0.0.1:30000, got {url!r}")
        if policy not in ROUTER_POLICIES:
            raise UsageError(f"unknown router policy {policy!r}: choose from {', '.join(ROUTER_POLICIES)}")
        if health_check_interval < 1 or health_failure_threshold < 1 or retries < 1:
            raise UsageError(
                "health_check_interval (whole seconds), health_failure_threshold and retries must be >= 1"
            )
        if min_healthy is not None and not 1 <= min_healthy <= len(workers):
            raise UsageError(f"min_healthy must be within 1..{len(workers)} (the workers), got {min_healthy}")
        python = str(python_executable) if python_executable is not None else sys.executable
        super().__init__(
            "sglang-router",
            host=host,
            port=port,
            api_key=api_key,
            extra_args=extra_args,
            command=(python, "-m", "sglang_router.launch_router"),
            env=env,
            log_path=log_path,
            startup_timeout=startup_timeout,
            shutdown_timeout=shutdown_timeout,
            health_generate=False,
        )
        self.worker_urls = workers
        self.policy = policy
        self.health_check_interval = health_check_interval
        self.health_failure_threshold = health_failure_threshold
        self.retries = retries
        self.min_healthy = len(workers) if min_healthy is None else min_healthy
        # Its Prometheus exporter listens on 0.0.0.0:29000 by default: two routers on a box would clash.
        self.prometheus_port = _free_port(host)

    @property
    def argv(self) -> tuple[str, ...]:
        """The full launch command (it contains the API key, if any: do not log it as is)."""
        args = [
            *self._program,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--worker-urls",
            *self.worker_urls,
            "--policy",
            self.policy,
            "--prometheus-host",
            self.host,
            "--prometheus-port",
            str(self.prometheus_port),
            "--health-check-interval-secs",
            str(self.health_check_interval),
            "--health-failure-threshold",
            str(self.health_failure_threshold),
            "--health-success-threshold",
            "1",
            # Workers are already up: registration is retried every second, not every 30.
            "--worker-startup-check-interval",
            "1",
            "--retry-max-retries",
            str(self.retries),
        ]
        if self.api_key:
            args += ["--api-key", self.api_key]
        return (*args, *self.extra_args)

    def __repr__(self) -> str:
        return (
            f"SGLangRouter(worker_urls={list(self.worker_urls)!r}, policy={self.policy!r}, "
            f"base_url={self.base_url!r}, pid={self.pid})"
        )

    async def start(self) -> None:
        """Launch the router and wait until its workers are healthy.

        Raises:
            SGLangServerError: The router's port is taken, the router exited, or the workers were not
                healthy within ``startup_timeout`` (the message says which worker is not).
            ConfigurationError: ``sglang-router`` cannot be run.
            UsageError: Called twice.
        """
        # A router that cannot bind its port exits only after half a minute: say so at once.
        if self.pid is None and not _port_free(self.host, self.port):
            raise SGLangServerError(
                f"cannot start the {self.label}: port {self.port} on {self.host} is already in use "
                "(another server?); pass another port=, or None to pick a free one",
                server=self.base_url,
            )
        await super().start()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the router log, without the color codes it writes even to a file."""
        return _ANSI.sub("", super().log_tail(lines))

    async def workers(self) -> list[dict[str, Any]]:
        """The router's view of its workers (``GET /workers``): ``url``, ``is_healthy``, ``load``, ...

        Raises:
            pacore_agent.exceptions.BackendError: The router did not answer.
        """
        async with SGLangNativeClient(self.base_url, api_key=self.api_key, timeout=10.0) as client:
            return await _workers(client)

    # -- hooks of SGLangServer's start-up -------------------------------------------------------------

    def _exit_hint(self, tail: str) -> str:
        if re.search(r"No module named '?sglang_router", tail):
            return (
                f" (sglang-router is not installed for {self._program[0]}: pip install 'pacore[router]', "
                "or pass python_executable=)"
            )
        if "Address already in use" in tail:
            return f" (port {self.port} or {self.prometheus_port} is in use: pass another port=, or None)"
        return ""

    async def _healthy(self, client: SGLangNativeClient) -> bool:
        try:
            listed = await _workers(client)
        except BackendError:
            return False
        healthy = {w.get("url") for w in listed if w.get("is_healthy")}
        return sum(url in healthy for url in self.worker_urls) >= self.min_healthy

    async def _unhealthy(self, client: SGLangNativeClient) -> str:
        try:
            listed = {str(w.get("url")): w for w in await _workers(client)}
            states = "; ".join(
                f"{url} {'healthy' if listed[url].get('is_healthy') else 'unhealthy'}"
                if url in listed
                else f"{url} not registered (unreachable, or not answering /health, /model_info, /server_info)"
                for url in self.worker_urls
            )
        except BackendError as error:
            states = f"the router did not answer GET /workers: {error}"
        wanted = "all" if self.min_healthy == len(self.worker_urls) else f"{self.min_healthy}"
        return (
            f"did not see {wanted} of its {len(self.worker_urls)} workers healthy ({states}; "
            "start the workers first and check that the router can reach them)"
        )


def _port_free(host: str, port: int) -> bool:
    """Whether nothing listens on the port (bound as the router binds it: TIME_WAIT does not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def _workers(client: SGLangNativeClient) -> list[dict[str, Any]]:
    data = await client.get_json("/workers")
    listed = data.get("workers") if isinstance(data, dict) else None
    return [w for w in listed if isinstance(w, dict)] if isinstance(listed, list) else []
