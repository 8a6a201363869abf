"""The SGLang server process: launch, health, logs and shutdown, or attach to one already running.

`SGLangServer` launches ``python -m sglang.launch_server`` in its own process group with its output in a
log file, waits until the server answers ``/health_generate``, notices when it dies, and on exit stops the
whole group (SIGTERM, then SIGKILL). Attach mode wraps a server that is already running: it is
health-checked and never stopped by us. API keys never appear in what it logs or raises: the launch
command is logged redacted, and quoted log tails have the keys masked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import anyio
import anyio.abc

from pacore_agent.backends.base import AsyncResource
from pacore_agent.backends.errors import redact
from pacore_agent.backends.sglang.native import HEALTH_CHECK_TIMEOUT, SGLangNativeClient
from pacore_agent.exceptions import ConfigurationError, EndpointConnectionError, UsageError

__all__ = [
    "DEFAULT_ATTACH_TIMEOUT",
    "DEFAULT_HOST",
    "DEFAULT_LOG_TAIL_LINES",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_STARTUP_TIMEOUT",
    "SGLangServer",
    "SGLangServerError",
    "group_members",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
"""Where a launched server listens: loopback only unless the caller asks otherwise."""

DEFAULT_STARTUP_TIMEOUT = 1800.0
"""Seconds a launched server may take to become healthy (downloads, weight loading, CUDA graphs)."""

DEFAULT_ATTACH_TIMEOUT = 30.0
"""Seconds an attached server may take to answer its health check."""

DEFAULT_SHUTDOWN_TIMEOUT = 30.0
"""Seconds between SIGTERM and SIGKILL when stopping a launched server."""

DEFAULT_LOG_TAIL_LINES = 40
"""Lines of the server log quoted in errors."""

_HEALTH_POLL_INTERVAL = 0.25
_DEATH_GRACE = 2.0
"""After a dropped connection, seconds to wait for a launched process to be seen exiting."""

_KILL_WAIT = 5.0
"""Seconds to wait for the process group to vanish after SIGKILL."""

_LOG_TAIL_BYTES = 64 * 1024


class SGLangServerError(EndpointConnectionError):
    """A launched SGLang server exited, or a server never became healthy.

    Not retryable: the process is gone (or never came up), so the same call would fail again.

    Attributes:
        server: The server's base URL.
        returncode: The process's exit status (negative: killed by that signal), when it exited.
        log_path: The server's log file, in launch mode.
        log_tail: The last lines of that log.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        server: str,
        returncode: int | None = None,
        log_path: Path | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.server = server
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = log_tail


class SGLangServer(AsyncResource):
    """An SGLang server process that we launch, or one already running that we attach to.

    Launch mode runs ``<python> -m sglang.launch_server --model-path ... --host ... --port ...`` (plus
    ``--tp-size``, ``--reasoning-parser``, ``--served-model-name``, ``--api-key`` when set, then
    ``extra_args``) in a new session, so the server and every worker it spawns share one process group
    that `stop` signals as a whole. Its stdout and stderr go to `log_path`.

    Use it as an async context manager::

        async with SGLangServer("Qwen/Qwen3-8B", reasoning_parser="qwen3") as server:
            print(server.base_url)

    Args:
        model_path: ``--model-path``: a local folder or a Hugging Face repo id (launch mode).
        base_url: Attach to the server running at this root URL instead of launching one (see
            `attach`); the launch settings below are then unused.
        host: ``--host``.
        port: ``--port``; a free port is picked when ``None``.
        tp_size: ``--tp-size`` (tensor parallelism, GPUs per server).
        reasoning_parser: ``--reasoning-parser`` (e.g. ``"qwen3"``, ``"deepseek-r1"``), so that chat
            answers carry ``reasoning_content`` apart from the conclusion.
        served_model_name: ``--served-model-name``: the model id of the OpenAI-compatible endpoint.
        api_key: ``--api-key``; sent as a bearer token by the clients. Never logged.
        admin_api_key: ``--admin-api-key``: the key of the admin endpoints (weight updates,
            ``/flush_cache``), where SGLang refuses the normal key. Never logged.
        extra_args: More ``sglang.launch_server`` arguments, passed as they are.
        command: The program to run instead of ``<python> -m sglang.launch_server``; the arguments above
            are appended to it. Tests run `pacore_agent.testing.fake_sglang` this way.
        python_executable: The interpreter of the default command (e.g. a virtualenv with SGLang);
            defaults to this interpreter.
        env: Environment variables set for the server on top of this process's environment (e.g.
            ``CUDA_VISIBLE_DEVICES``).
        log_path: Where the server's output goes (appended); a new temporary file when ``None``.
        startup_timeout: Seconds the server may take to become healthy.
        shutdown_timeout: Seconds between SIGTERM and SIGKILL on `stop`.
        health_generate: Wait on ``/health_generate`` (the model produced a token) rather than
            ``/health``.

    Raises:
        UsageError: Inconsistent settings.
    """

    label: ClassVar[str] = "SGLang server"
    """What the process is, in log lines and errors (subclasses launch other programs)."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        host: str = DEFAULT_HOST,
        port: int | None = None,
        tp_size: int = 1,
        reasoning_parser: str | None = None,
        served_model_name: str | None = None,
        api_key: str | None = None,
        admin_api_key: str | None = None,
        extra_args: Sequence[str] = (),
        command: Sequence[str] | None = None,
        python_executable: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        health_generate: bool = True,
    ) -> None:
        launch = base_url is None
        if launch and (model_path is None or not str(model_path)):
            raise UsageError(
                "SGLangServer needs a model_path to launch, or base_url to attach to a running server"
            )
        if not launch and model_path is not None:
            raise UsageError("pass either model_path (launch a server) or base_url (attach to one), not both")
        if base_url is not None and not re.match(r"^https?://[^/]+", base_url):
            raise UsageError(f"base_url must be an http(s) URL like http://127.0.0.1:30000, got {base_url!r}")
        if command is not None and python_executable is not None:
            raise UsageError("pass either command or python_executable, not both")
        if command is not None and (isinstance(command, str) or not command):
            raise UsageError("command must be a non-empty sequence of arguments, e.g. [python, '-m', 'x']")
        if isinstance(extra_args, str):
            raise UsageError(
                "extra_args must be a sequence of arguments, e.g. ['--mem-fraction-static', '0.8']"
            )
        if tp_size < 1:
            raise UsageError(f"tp_size must be at least 1, got {tp_size}")
        if port is not None and not 0 < port < 65536:
            raise UsageError(f"port must be within 1..65535, got {port}")
        if startup_timeout <= 0 or shutdown_timeout < 0:
            raise UsageError("startup_timeout must be positive and shutdown_timeout not negative")
        self.model_path = str(model_path) if model_path is not None else None
        self.host = host
        self.tp_size = tp_size
        self.reasoning_parser = reasoning_parser
        self.served_model_name = served_model_name
        self.api_key = api_key
        self.admin_api_key = admin_api_key
        self.extra_args = tuple(str(arg) for arg in extra_args)
        if command is not None:
            self._program = tuple(str(part) for part in command)
        else:
            python = str(python_executable) if python_executable is not None else sys.executable
            self._program = (python, "-m", "sglang.launch_server")
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.health_generate = health_generate
        if base_url is None:
            self.port = port if port is not None else _free_port(host)
            self._base_url = f"http://{_url_host(host)}:{self.port}"
        else:
            self._base_url = base_url.rstrip("/").removesuffix("/v1")
            self.port = port or 0
        self._log_path = Path(log_path) if log_path is not None else None
        self._launch = launch
        self._process: anyio.abc.Process | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._stopped = False

    @classmethod
    def attach(
        cls,
        base_url: str,
        *,
        api_key: str | None = None,
        admin_api_key: str | None = None,
        timeout: float = DEFAULT_ATTACH_TIMEOUT,
        health_generate: bool = True,
    ) -> SGLangServer:
        """A server that is already running; `start` health-checks it and `stop` leaves it running.

        Same as ``SGLangServer(base_url=..., api_key=..., startup_timeout=timeout)``.

        Args:
            base_url: Its root URL, e.g. ``http://127.0.0.1:30000`` (a trailing ``/v1`` is dropped).
            api_key: Its ``--api-key``, if it has one.
            admin_api_key: Its ``--admin-api-key``, if it has one.
            timeout: Seconds it may take to answer the health check.
            health_generate: Check ``/health_generate`` rather than ``/health``.

        Raises:
            UsageError: ``base_url`` is not an http(s) URL.
        """
        return cls(
            base_url=base_url,
            api_key=api_key,
            admin_api_key=admin_api_key,
            startup_timeout=timeout,
            health_generate=health_generate,
        )

    # -- read-only views ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Root URL of the server, e.g. ``http://127.0.0.1:30000`` (the OpenAI API is under ``/v1``)."""
        return self._base_url

    @property
    def launched(self) -> bool:
        """Whether we launch (and so stop) the process; ``False`` in attach mode."""
        return self._launch

    @property
    def log_path(self) -> Path | None:
        """The server's log file (launch mode; known once started when not given)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The launched process's id (also its process group id), once started."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The launched process's exit status once it exited; negative when killed by a signal."""
        return self._process.returncode if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the launched process was started and has not exited."""
        return self._process is not None and self._process.returncode is None

    @property
    def argv(self) -> tuple[str, ...]:
        """The full launch command (it contains the API key, if any: do not log it as is)."""
        if self.model_path is None:
            return ()
        args = [
            *self._program,
            "--model-path",
            self.model_path,
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if self.tp_size != 1:
            args += ["--tp-size", str(self.tp_size)]
        if self.reasoning_parser:
            args += ["--reasoning-parser", self.reasoning_parser]
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        if self.api_key:
            args += ["--api-key", self.api_key]
        if self.admin_api_key:
            args += ["--admin-api-key", self.admin_api_key]
        return (*args, *self.extra_args)

    def __repr__(self) -> str:
        if not self._launch:
            return f"SGLangServer.attach({self._base_url!r})"
        return (
            f"SGLangServer(model_path={self.model_path!r}, base_url={self._base_url!r}, "
            f"pid={self.pid}, log_path={str(self._log_path) if self._log_path else None!r})"
        )

    def log_tail(self, lines: int = DEFAULT_LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log ("" in attach mode or before any output), keys masked."""
        if self._log_path is None:
            return ""
        try:
            with self._log_path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - _LOG_TAIL_BYTES))
                data = handle.read()
        except OSError:
            return ""
        text = data.decode("utf-8", errors="replace")
        # SGLang prints its server arguments, keys included: they never leave through an error.
        return redact("\n".join(text.splitlines()[-lines:]), (self.api_key, self.admin_api_key))

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Launch the server (launch mode) and wait until it is healthy.

        In attach mode, only the health check. If the server dies or does not become healthy in time,
        a launched process group is stopped before the error propagates.

        Raises:
            SGLangServerError: The process exited during startup, or the server was not healthy in time.
                The message quotes the exit code and the end of the log.
            ConfigurationError: The command cannot be run (no such executable).
            UsageError: Called twice on a launched server.
        """
        if not self._launch:
            await self._wait_healthy(self.startup_timeout)
            return
        if self._process is not None:
            raise UsageError(f"{self!r} was already started; create a new {type(self).__name__} to relaunch")
        log_file, self._log_path = await anyio.to_thread.run_sync(_open_log, self._log_path, self.port)
        logger.info("launching %s: %s (log: %s)", self.label, " ".join(_redacted(self.argv)), self._log_path)
        try:
            self._process = await anyio.open_process(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot run {self._program[0]!r} to launch the {self.label}: {exc}; pass "
                "python_executable= (an interpreter with it installed) or command="
            ) from exc
        finally:
            log_file.close()
        # If the interpreter exits without `stop` (a crash, a forgotten context manager), kill the group.
        self._finalizer = weakref.finalize(self, _kill_group, self._process.pid)
        try:
            await self._wait_healthy(self.startup_timeout)
        except BaseException:
            await self.stop()
            raise
        logger.info("%s is healthy at %s (pid %s)", self.label, self._base_url, self.pid)

    async def stop(self) -> None:
        """Stop a launched server and every process in its group; a no-op in attach mode. Idempotent.

        SIGTERM goes to the whole process group; whatever is still alive after `shutdown_timeout`
        seconds gets SIGKILL. Runs to completion even when the caller is being cancelled.
        """
        process = self._process
        if process is None or self._stopped:
            return
        self._stopped = True
        with anyio.CancelScope(shield=True):
            pgid = process.pid
            _signal_group(pgid, signal.SIGTERM)
            with anyio.move_on_after(self.shutdown_timeout):
                await process.wait()
                await _wait_group_gone(pgid)
            if process.returncode is None or await anyio.to_thread.run_sync(_group_alive, pgid):
                logger.warning(
                    "%s (pid %s) still running %ss after SIGTERM; sending SIGKILL",
                    self.label,
                    pgid,
                    self.shutdown_timeout,
                )
                _signal_group(pgid, signal.SIGKILL)
                with anyio.move_on_after(_KILL_WAIT):
                    await process.wait()
                    await _wait_group_gone(pgid)
            await process.aclose()
            if self._finalizer is not None:
                self._finalizer.detach()
        logger.info("%s (pid %s) stopped with exit status %s", self.label, pgid, process.returncode)

    async def aclose(self) -> None:
        """Same as `stop` (the context manager's exit)."""
        await self.stop()

    async def wait_exited(self, seconds: float) -> int | None:
        """Wait up to ``seconds`` for the launched process to exit.

        Returns:
            Its exit status, or ``None`` if it is still running (or in attach mode).
        """
        process = self._process
        if process is None:
            return None
        with anyio.move_on_after(seconds):
            await process.wait()
        return process.returncode

    async def lost_connection_error(self, context: str) -> SGLangServerError | None:
        """After a lost connection: the death of a launched process, given a moment to be seen exiting.

        Returns:
            The error describing its exit, or ``None`` in attach mode or while it still runs.
        """
        if not self._launch or self._process is None:
            return None
        await self.wait_exited(_DEATH_GRACE)
        return await self.death_error(context)

    async def death_error(self, context: str) -> SGLangServerError | None:
        """The error describing a launched process that exited, or ``None`` while it runs.

        Args:
            context: What was going on, e.g. ``"during POST /generate"``.
        """
        process = self._process
        if process is None or process.returncode is None:
            return None
        tail = await anyio.to_thread.run_sync(self.log_tail)
        hint = self._exit_hint(tail)
        return SGLangServerError(
            f"the {self.label} at {self._base_url} (pid {process.pid}) exited with status "
            f"{process.returncode} {context}{hint}; last lines of {self._log_path}:\n{tail}",
            server=self._base_url,
            returncode=process.returncode,
            log_path=self._log_path,
            log_tail=tail,
        )

    def _exit_hint(self, tail: str) -> str:
        """Why the process probably exited, from its log (" (...)"), or ""."""
        if re.search(r"No module named '?sglang", tail):
            return (
                f" (SGLang is not installed for {self._program[0]}: install it there, e.g. "
                "pip install 'pacore[sglang]' on a CUDA machine, or pass python_executable=)"
            )
        return ""

    async def _healthy(self, client: SGLangNativeClient) -> bool:
        """One health check (`start` polls it until it passes)."""
        return await client.health(generate=self.health_generate)

    async def _unhealthy(self, client: SGLangNativeClient) -> str:
        """What the failed health check awaited, for the error after ``startup_timeout``."""
        path = "/health_generate" if self.health_generate else "/health"
        return f"did not answer {path} with 200"

    async def _wait_healthy(self, seconds: float) -> None:
        async with SGLangNativeClient(
            self._base_url, api_key=self.api_key, timeout=HEALTH_CHECK_TIMEOUT
        ) as client:
            with anyio.move_on_after(seconds):
                while True:
                    error = await self.death_error("while starting up")
                    if error is not None:
                        raise error
                    if await self._healthy(client):
                        return
                    await anyio.sleep(_HEALTH_POLL_INTERVAL)
            error = await self.death_error("while starting up")
            if error is not None:
                raise error
            what = await self._unhealthy(client)
        tail = await anyio.to_thread.run_sync(self.log_tail)
        where = f"; last lines of {self._log_path}:\n{tail}" if self._launch else ""
        raise SGLangServerError(
            f"the {self.label} at {self._base_url} {what} within {seconds:g}s{where}",
            server=self._base_url,
            log_path=self._log_path,
            log_tail=tail,
        )


def _open_log(path: Path | None, port: int) -> tuple[IO[bytes], Path]:
    """The server's log file, opened for appending (a new temporary file when ``path`` is None)."""
    if path is None:
        fd, name = tempfile.mkstemp(prefix=f"sglang-{port}-", suffix=".log")
        return os.fdopen(fd, "ab"), Path(name)
    return path.open("ab"), path


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _redacted(argv: Sequence[str]) -> list[str]:
    out = list(argv)
    for index, arg in enumerate(out[:-1]):
        if arg in ("--api-key", "--admin-api-key"):
            out[index + 1] = "***"
    return out


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def _wait_group_gone(pgid: int) -> None:
    """Poll until no live process is left in the group: there is no event to wait on for a group."""
    while True:
        if not await anyio.to_thread.run_sync(_group_alive, pgid):
            return
        await anyio.sleep(0.05)


def _kill_group(pgid: int) -> None:
    _signal_group(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, read from ``/proc`` (Linux).

    Raises:
        FileNotFoundError: There is no ``/proc``.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is left in the process group."""
    if Path("/proc").is_dir():
        return bool(group_members(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True  # it exists, or it exists and is not ours (PermissionError)
