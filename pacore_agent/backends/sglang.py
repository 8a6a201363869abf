"""SGLang: launch or attach to a server, speak its native API, and generate through it.

Three layers, each usable alone:

- `SGLangServer`: the process. It launches ``python -m sglang.launch_server`` in its own process group
  with its output in a log file, waits until the server answers ``/health_generate``, notices when it
  dies, and on exit stops the whole group (SIGTERM, then SIGKILL). Attach mode wraps a server that is
  already running: it is health-checked and never stopped by us.
- `SGLangNativeClient`: SGLang's own HTTP API over one pooled aiohttp session: ``/generate`` with token
  ids and logprobs, ``/update_weights_from_disk``, ``/update_weights_from_tensor``, ``/flush_cache``,
  ``/get_model_info``, ``/health``. Errors become `pacore_agent.exceptions` classes with status and body;
  a launched server that died is reported with its exit code and the tail of its log.
- `SGLangBackend`: the `Backend`. ``generate`` goes through the OpenAI-compatible endpoint
  (``/v1/chat/completions``) with the chat backend; the native client and the weight updates are there
  for training.

SGLang is an optional dependency that needs CUDA: it is never imported, only run as a command and
reached over HTTP, so this module works (and is tested against `pacore_agent.testing.fake_sglang`)
anywhere.
"""

from __future__ import annotations

import contextlib
import json
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
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import aiohttp
import anyio
import anyio.abc

from pacore_agent.backends.base import (
    DEFAULT_MAX_CONCURRENCY,
    Backend,
    Completion,
    DeltaCallback,
    GenerationRequest,
)
from pacore_agent.backends.errors import error_fields, error_from_response, excerpt
from pacore_agent.exceptions import (
    BackendError,
    ConfigurationError,
    EndpointConnectionError,
    EndpointTimeoutError,
    MalformedResponseError,
    RequestRejectedError,
    UsageError,
)
from pacore_agent.results import Usage

__all__ = [
    "DEFAULT_ATTACH_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_STARTUP_TIMEOUT",
    "NativeCompletion",
    "SGLangBackend",
    "SGLangNativeClient",
    "SGLangServer",
    "SGLangServerError",
    "WeightUpdateResult",
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

DEFAULT_REQUEST_TIMEOUT = 3600.0
"""Seconds one native request may take: a batch of long reasoning traces is slow."""

DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection to the server."""

DEFAULT_LOG_TAIL_LINES = 40
"""Lines of the server log quoted in errors."""

_HEALTH_CHECK_TIMEOUT = 30.0
"""Seconds one health request may take (SGLang's /health_generate waits up to 20 s for a token)."""

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


# --------------------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------------------


class SGLangServer:
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
        timeout: float = DEFAULT_ATTACH_TIMEOUT,
        health_generate: bool = True,
    ) -> SGLangServer:
        """A server that is already running; `start` health-checks it and `stop` leaves it running.

        Same as ``SGLangServer(base_url=..., api_key=..., startup_timeout=timeout)``.

        Args:
            base_url: Its root URL, e.g. ``http://127.0.0.1:30000`` (a trailing ``/v1`` is dropped).
            api_key: Its ``--api-key``, if it has one.
            timeout: Seconds it may take to answer the health check.
            health_generate: Check ``/health_generate`` rather than ``/health``.

        Raises:
            UsageError: ``base_url`` is not an http(s) URL.
        """
        return cls(
            base_url=base_url, api_key=api_key, startup_timeout=timeout, health_generate=health_generate
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
        return (*args, *self.extra_args)

    def __repr__(self) -> str:
        if not self._launch:
            return f"SGLangServer.attach({self._base_url!r})"
        return (
            f"SGLangServer(model_path={self.model_path!r}, base_url={self._base_url!r}, "
            f"pid={self.pid}, log_path={str(self._log_path) if self._log_path else None!r})"
        )

    def log_tail(self, lines: int = DEFAULT_LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log ("" in attach mode or before any output)."""
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
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

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
            raise UsageError(f"{self!r} was already started; create a new SGLangServer to relaunch")
        log_file, self._log_path = await anyio.to_thread.run_sync(_open_log, self._log_path, self.port)
        logger.info("launching SGLang: %s (log: %s)", " ".join(_redacted(self.argv)), self._log_path)
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
                f"cannot run {self._program[0]!r} to launch SGLang: {exc}; pass python_executable= (an "
                "interpreter with SGLang installed) or command="
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
        logger.info("SGLang server is healthy at %s (pid %s)", self._base_url, self.pid)

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
                    "SGLang server (pid %s) still running %ss after SIGTERM; sending SIGKILL",
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
        logger.info("SGLang server (pid %s) stopped with exit status %s", pgid, process.returncode)

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

    async def death_error(self, context: str) -> SGLangServerError | None:
        """The error describing a launched process that exited, or ``None`` while it runs.

        Args:
            context: What was going on, e.g. ``"during POST /generate"``.
        """
        process = self._process
        if process is None or process.returncode is None:
            return None
        tail = await anyio.to_thread.run_sync(self.log_tail)
        hint = ""
        if re.search(r"No module named '?sglang", tail):
            hint = (
                f" (SGLang is not installed for {self._program[0]}: install it there, e.g. "
                "pip install 'pacore[sglang]' on a CUDA machine, or pass python_executable=)"
            )
        return SGLangServerError(
            f"the SGLang server at {self._base_url} (pid {process.pid}) exited with status "
            f"{process.returncode} {context}{hint}; last lines of {self._log_path}:\n{tail}",
            server=self._base_url,
            returncode=process.returncode,
            log_path=self._log_path,
            log_tail=tail,
        )

    async def _wait_healthy(self, seconds: float) -> None:
        path = "/health_generate" if self.health_generate else "/health"
        async with SGLangNativeClient(
            self._base_url, api_key=self.api_key, timeout=_HEALTH_CHECK_TIMEOUT
        ) as client:
            with anyio.move_on_after(seconds):
                while True:
                    error = await self.death_error("while starting up")
                    if error is not None:
                        raise error
                    if await client.health(generate=self.health_generate):
                        return
                    await anyio.sleep(_HEALTH_POLL_INTERVAL)
        error = await self.death_error("while starting up")
        if error is not None:
            raise error
        tail = await anyio.to_thread.run_sync(self.log_tail)
        where = f"; last lines of {self._log_path}:\n{tail}" if self._launch else ""
        raise SGLangServerError(
            f"the SGLang server at {self._base_url} did not answer {path} with 200 "
            f"within {seconds:g}s{where}",
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


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is left in the process group."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


# --------------------------------------------------------------------------------------------------
# The native API
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NativeCompletion:
    """One sequence generated by SGLang's native ``/generate``.

    Attributes:
        token_ids: The generated token ids (the stop token included, as SGLang returns them).
        logprobs: The sampling log-probability of each of ``token_ids`` (``return_logprob=True``).
        text: The detokenized text, when the server has a tokenizer.
        finish_reason: ``"stop"``, ``"length"`` or ``"abort"`` (SGLang's ``finish_reason.type``).
        prompt_tokens: Tokens of the prompt.
        completion_tokens: Tokens generated; equals ``len(token_ids)``.
        cached_tokens: Prompt tokens served from the prefix cache.
        prompt_index: Which prompt of the batch this sequence continues.
        sample_index: Which of that prompt's ``n`` samples this is.
        finish_details: SGLang's whole ``finish_reason`` (the matched stop, an abort's message, ...).
        weight_version: The server's weight version when it generated this sequence.
        meta_info: The raw ``meta_info`` object, for anything else.
    """

    token_ids: list[int]
    logprobs: list[float] | None
    text: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    prompt_index: int = 0
    sample_index: int = 0
    finish_details: Mapping[str, Any] | None = None
    weight_version: str | None = None
    meta_info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def usage(self) -> Usage:
        """Token counts as a `Usage`."""
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
        )


@dataclass(frozen=True, slots=True)
class WeightUpdateResult:
    """What SGLang answered to a successful weight update.

    Attributes:
        message: The server's message.
        num_paused_requests: Requests paused during the update (a list with data parallelism).
    """

    message: str
    num_paused_requests: int | list[int] | None = None


class SGLangNativeClient:
    """SGLang's native HTTP API, over one pooled aiohttp session.

    Args:
        base_url: The server's root URL, e.g. ``http://127.0.0.1:30000``.
        api_key: The server's ``--api-key``, sent as a bearer token. Never logged or shown.
        timeout: Seconds one request may take.
        connect_timeout: Seconds to open a connection.
        max_connections: Connections kept open to the server at most.
        server: The `SGLangServer` behind ``base_url``: a dropped connection to a launched server that
            exited is then reported with its exit status and log tail.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_connections: int = 256,
        server: SGLangServer | None = None,
    ) -> None:
        if not re.match(r"^https?://[^/]+", base_url or ""):
            raise UsageError(f"base_url must be an http(s) URL like http://127.0.0.1:30000, got {base_url!r}")
        if timeout <= 0 or connect_timeout <= 0 or max_connections <= 0:
            raise UsageError("timeout, connect_timeout and max_connections must be positive")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.server = server
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"SGLangNativeClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections. Idempotent; the client reopens them if used again."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout),
                connector=aiohttp.TCPConnector(limit=self.max_connections),
            )
        return self._session

    # -- endpoints ------------------------------------------------------------------------------

    async def health(self, *, generate: bool = False) -> bool:
        """Whether the server answers ``/health`` (or ``/health_generate``) with 200 within 30 s.

        Args:
            generate: Ask ``/health_generate``: the server must produce a token to pass.

        Returns:
            ``True`` when healthy; ``False`` for any other answer or no answer at all.
        """
        path = "/health_generate" if generate else "/health"
        try:
            async with self._get_session().get(
                self.base_url + path, timeout=aiohttp.ClientTimeout(total=_HEALTH_CHECK_TIMEOUT)
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def get_model_info(self) -> dict[str, Any]:
        """``GET /get_model_info``: ``model_path``, ``is_generation``, ``weight_version``, ...

        Raises:
            pacore_agent.exceptions.BackendError: The request failed.
        """
        data = await self._call_json("GET", "/get_model_info")
        if not isinstance(data, dict):
            raise MalformedResponseError(f"GET /get_model_info returned {type(data).__name__}, not an object")
        return data

    async def list_models(self) -> list[str]:
        """The model ids of the OpenAI-compatible endpoint (``GET /v1/models``).

        Raises:
            pacore_agent.exceptions.BackendError: The request failed.
        """
        data = await self._call_json("GET", "/v1/models")
        try:
            return [str(card["id"]) for card in data["data"]]
        except (KeyError, TypeError) as exc:
            raise MalformedResponseError(
                "GET /v1/models did not return a model list", body=excerpt(data)
            ) from exc

    async def flush_cache(self) -> None:
        """``POST /flush_cache``: empty the prefix (radix) cache, e.g. after a weight update.

        Raises:
            pacore_agent.exceptions.RequestRejectedError: SGLang refused: it flushes only when no request
                is running or waiting.
            pacore_agent.exceptions.BackendError: The request failed otherwise.
        """
        status, text, headers = await self._request("POST", "/flush_cache")
        if status == 400:
            raise RequestRejectedError(
                "SGLang did not flush its cache: it does so only when no request is running or waiting",
                status_code=status,
                body=excerpt(text),
            )
        if status != 200:
            raise error_from_response("POST /flush_cache", status, text, headers)

    async def update_weights_from_disk(
        self,
        model_path: str | os.PathLike[str],
        *,
        load_format: str | None = None,
        abort_all_requests: bool = False,
        weight_version: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> WeightUpdateResult:
        """``POST /update_weights_from_disk``: load new weights in place, e.g. a training checkpoint.

        Args:
            model_path: A folder (or repo id) with weights of the same architecture.
            load_format: SGLang's ``--load-format`` for these weights; the server's when ``None``.
            abort_all_requests: Abort running requests instead of waiting for them.
            weight_version: A label the server reports afterwards (``meta_info.weight_version``).
            extra: More request fields of your SGLang version, passed as they are.

        Returns:
            The server's message.

        Raises:
            pacore_agent.exceptions.RequestRejectedError: The server answered ``success: false``; the
                message says why (its body is in ``.body``).
            pacore_agent.exceptions.BackendError: The request failed otherwise.
        """
        body: dict[str, Any] = {"model_path": str(model_path)}
        if load_format is not None:
            body["load_format"] = load_format
        if abort_all_requests:
            body["abort_all_requests"] = True
        if weight_version is not None:
            body["weight_version"] = weight_version
        body.update(extra or {})
        return await self._update_weights("/update_weights_from_disk", body)

    async def update_weights_from_tensor(
        self,
        serialized_named_tensors: Sequence[str],
        *,
        load_format: str | None = None,
        flush_cache: bool = True,
        abort_all_requests: bool = False,
        weight_version: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> WeightUpdateResult:
        """``POST /update_weights_from_tensor``: load weights a co-located trainer serialized for SGLang.

        Only the tensors' handles travel over HTTP; the payloads are SGLang's own serialization (one
        base64 string per tensor-parallel rank), made on the trainer's side with SGLang's utilities.

        Args:
            serialized_named_tensors: One serialized list of (name, tensor) per TP rank.
            load_format: How the server reads them (e.g. ``"flattened_bucket"``); default when ``None``.
            flush_cache: Flush the prefix cache after the update.
            abort_all_requests: Abort running requests instead of waiting for them.
            weight_version: A label the server reports afterwards.
            extra: More request fields of your SGLang version, passed as they are.

        Raises:
            pacore_agent.exceptions.RequestRejectedError: The server answered ``success: false``.
            pacore_agent.exceptions.BackendError: The request failed otherwise.
        """
        body: dict[str, Any] = {
            "serialized_named_tensors": list(serialized_named_tensors),
            "flush_cache": flush_cache,
        }
        if load_format is not None:
            body["load_format"] = load_format
        if abort_all_requests:
            body["abort_all_requests"] = True
        if weight_version is not None:
            body["weight_version"] = weight_version
        body.update(extra or {})
        return await self._update_weights("/update_weights_from_tensor", body)

    async def generate_ids(
        self,
        input_ids: Sequence[int] | Sequence[Sequence[int]],
        sampling: Mapping[str, Any] | None = None,
        *,
        return_logprob: bool = True,
        n: int = 1,
        logprob_start_len: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> list[NativeCompletion]:
        """``POST /generate`` from token ids, with the log-probability of every generated token.

        The ``n`` samples of a prompt are sent as ``n`` copies of it in one batch (SGLang's advice over
        ``sampling_params.n``; its radix cache shares the prefix), so the results come back in a known
        order: prompt by prompt, sample by sample.

        Args:
            input_ids: One prompt (a list of ids) or a batch (a list of lists).
            sampling: SGLang sampling parameters, e.g. ``{"temperature": 1.0, "top_p": 1.0,
                "max_new_tokens": 4096, "stop_token_ids": [...]}``. Set ``max_new_tokens``: SGLang's
                default is 128.
            return_logprob: Ask for ``meta_info.output_token_logprobs``.
            n: Samples per prompt.
            logprob_start_len: SGLang's ``logprob_start_len`` (prompt logprobs from that position).
            extra: More ``GenerateReqInput`` fields (``lora_path``, ``rid``, ...), passed as they are.

        Returns:
            ``len(prompts) * n`` completions, ordered ``[p0 s0, p0 s1, ..., p1 s0, ...]``.

        Raises:
            UsageError: Empty prompts, non-integer ids, ``n < 1``, or ``n`` inside ``sampling``.
            pacore_agent.exceptions.ContextLengthError: A prompt plus ``max_new_tokens`` does not fit.
            pacore_agent.exceptions.MalformedResponseError: The answer is not what SGLang returns (e.g.
                token ids and logprobs of different lengths).
            pacore_agent.exceptions.BackendError: The request failed otherwise.
        """
        prompts = _normalize_prompts(input_ids)
        if n < 1:
            raise UsageError(f"n must be at least 1, got {n}")
        sampling_params = dict(sampling or {})
        if "n" in sampling_params:
            raise UsageError(
                "pass the sample count as n=..., not in sampling: pacore expands it into the batch"
            )
        expanded = [prompt for prompt in prompts for _ in range(n)]
        body: dict[str, Any] = {
            "input_ids": expanded[0] if len(expanded) == 1 else expanded,
            "sampling_params": sampling_params,
            "return_logprob": return_logprob,
            "stream": False,
        }
        if logprob_start_len is not None:
            body["logprob_start_len"] = logprob_start_len
        body.update(extra or {})
        data = await self._call_json("POST", "/generate", body)
        items = [data] if isinstance(data, dict) else data
        if not isinstance(items, list) or len(items) != len(expanded):
            got = len(items) if isinstance(items, list) else type(data).__name__
            raise MalformedResponseError(
                f"POST /generate returned {got} results for {len(expanded)} sequences", body=excerpt(data)
            )
        return [
            _parse_generate_item(
                item, prompt_index=index // n, sample_index=index % n, logprobs=return_logprob
            )
            for index, item in enumerate(items)
        ]

    # -- plumbing -------------------------------------------------------------------------------

    async def _update_weights(self, path: str, body: dict[str, Any]) -> WeightUpdateResult:
        data = await self._call_json("POST", path, body)
        if not isinstance(data, dict) or data.get("success") is not True:
            raise RequestRejectedError(
                f"POST {path} did not succeed: {error_fields(data).message}",
                status_code=200,
                body=excerpt(data),
            )
        paused = data.get("num_paused_requests")
        return WeightUpdateResult(message=str(data.get("message", "")), num_paused_requests=paused)

    async def _call_json(self, method: str, path: str, body: Any = None) -> Any:
        status, text, headers = await self._request(method, path, body)
        if status != 200:
            raise error_from_response(f"{method} {path}", status, text, headers)
        try:
            return json.loads(text)
        except ValueError as exc:
            raise MalformedResponseError(
                f"{method} {path} returned a body that is not JSON",
                status_code=status,
                body=excerpt(text),
            ) from exc

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, str, Mapping[str, str]]:
        what = f"{method} {path}"
        try:
            async with self._get_session().request(method, self.base_url + path, json=body) as response:
                raw = await response.read()
                return response.status, raw.decode("utf-8", errors="replace"), dict(response.headers)
        except TimeoutError as exc:
            raise EndpointTimeoutError(
                f"{what}: the SGLang server at {self.base_url} did not answer within {self.timeout:g}s"
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise await self._connection_error(what, exc) from exc

    async def _connection_error(self, what: str, exc: BaseException) -> BackendError:
        server = self.server
        if server is not None and server.launched and server.pid is not None:
            await server.wait_exited(_DEATH_GRACE)
            died = await server.death_error(f"during {what}")
            if died is not None:
                return died
            return EndpointConnectionError(
                f"{what}: lost the connection to the SGLang server at {self.base_url} "
                f"(pid {server.pid} is still running; log: {server.log_path}): {exc}"
            )
        return EndpointConnectionError(f"{what}: could not reach the SGLang server at {self.base_url}: {exc}")


def _normalize_prompts(input_ids: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(input_ids, (str, bytes)) or not isinstance(input_ids, Sequence) or not input_ids:
        raise UsageError("input_ids must be a non-empty list of token ids or a non-empty list of such lists")
    raw: list[list[Any]] = []
    if isinstance(input_ids[0], int):
        raw.append(list(input_ids))
    else:
        for prompt in input_ids:
            if isinstance(prompt, (str, bytes, int)) or not isinstance(prompt, Sequence):
                raise UsageError("input_ids must be a list of token ids or a list of such lists, not a mix")
            raw.append(list(prompt))
    for index, prompt in enumerate(raw):
        if not prompt:
            raise UsageError(f"prompt {index} of input_ids is empty")
        if not all(isinstance(token, int) and not isinstance(token, bool) for token in prompt):
            raise UsageError(f"prompt {index} of input_ids holds something other than integer token ids")
    return raw


def _parse_generate_item(
    item: Any, *, prompt_index: int, sample_index: int, logprobs: bool
) -> NativeCompletion:
    where = f"POST /generate result {prompt_index}/{sample_index}"
    meta = item.get("meta_info") if isinstance(item, dict) else None
    if not isinstance(meta, dict):
        raise MalformedResponseError(f"{where} has no meta_info object", body=excerpt(item))
    output_ids = item.get("output_ids")
    token_ids: list[int] | None = None
    token_logprobs: list[float] | None = None
    try:
        if output_ids is not None:
            token_ids = [int(token) for token in output_ids]
        if logprobs:
            entries = meta["output_token_logprobs"]
            token_logprobs = [float(entry[0]) for entry in entries]
            logprob_ids = [int(entry[1]) for entry in entries]
            if token_ids is None:
                token_ids = logprob_ids
            elif token_ids != logprob_ids:
                raise MalformedResponseError(
                    f"{where}: output_ids ({len(token_ids)}) and output_token_logprobs ({len(logprob_ids)}) "
                    "name different tokens",
                    body=excerpt(item),
                )
        prompt_tokens = int(meta["prompt_tokens"])
        completion_tokens = int(meta["completion_tokens"])
        cached_tokens = int(meta.get("cached_tokens") or 0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise MalformedResponseError(
            f"{where} is not a /generate result: {exc!r}", body=excerpt(item)
        ) from exc
    if token_ids is None:
        raise MalformedResponseError(
            f"{where} has neither output_ids nor logprobs: ask for return_logprob=True", body=excerpt(item)
        )
    if len(token_ids) != completion_tokens:
        raise MalformedResponseError(
            f"{where}: {len(token_ids)} token ids for completion_tokens={completion_tokens}",
            body=excerpt(item),
        )
    finish = meta.get("finish_reason")
    finish_details = finish if isinstance(finish, dict) else None
    finish_reason = str(finish.get("type")) if isinstance(finish, dict) else (str(finish) if finish else None)
    text = item.get("text")
    version = meta.get("weight_version")
    return NativeCompletion(
        token_ids=token_ids,
        logprobs=token_logprobs,
        text=text if isinstance(text, str) else None,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=cached_tokens,
        prompt_index=prompt_index,
        sample_index=sample_index,
        finish_details=finish_details,
        weight_version=str(version) if version is not None else None,
        meta_info=meta,
    )


# --------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------


class SGLangBackend(Backend):
    """A `Backend` on an SGLang server that it launches or attaches to.

    ``generate`` goes through the server's OpenAI-compatible chat endpoint with ``chat_backend`` (an
    `OpenAIBackend` on ``<base_url>/v1`` unless one is given), so reasoning parsers, chat templates and
    ``n`` behave as for any OpenAI-compatible server. Training uses the rest: `generate_ids` (token ids
    and logprobs), `update_weights_from_disk`, `update_weights_from_tensor`, `flush_cache`, and
    `native` for anything else of SGLang's own API.

    Build it with `launch` or `attach` and use it as an async context manager::

        async with SGLangBackend.launch("PaCoRe/PaCoRe-8B", tp_size=2, reasoning_parser="qwen3") as backend:
            completions = await backend.generate(request)

    Args:
        server: The server (from `SGLangServer` or `SGLangServer.attach`); started on entry, stopped on
            exit when launched.
        model: The model id for chat requests; the endpoint's only model when ``None``.
        chat_backend: The backend for ``generate``; it stays the caller's to close.
        max_concurrency: Requests in flight at once, for chat and native calls alike.
        request_timeout: Seconds one native request may take.
    """

    name = "sglang"

    def __init__(
        self,
        server: SGLangServer,
        *,
        model: str | None = None,
        chat_backend: Backend | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency)
        self.server = server
        self.model = model or server.served_model_name
        self.name = self.model or server.model_path or server.base_url
        self.request_timeout = request_timeout
        self._chat_backend = chat_backend
        self._owns_chat_backend = chat_backend is None
        self._native: SGLangNativeClient | None = None
        self._closed = False

    @classmethod
    def launch(
        cls,
        model_path: str | os.PathLike[str],
        *,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        tp_size: int = 1,
        reasoning_parser: str | None = None,
        served_model_name: str | None = None,
        api_key: str | None = None,
        extra_args: Sequence[str] = (),
        command: Sequence[str] | None = None,
        python_executable: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        model: str | None = None,
        chat_backend: Backend | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> SGLangBackend:
        """A backend that launches its own SGLang server on entry and stops it on exit.

        The server arguments are `SGLangServer`'s; the rest are this class's.

        Raises:
            UsageError: Inconsistent settings.
        """
        server = SGLangServer(
            model_path,
            host=host,
            port=port,
            tp_size=tp_size,
            reasoning_parser=reasoning_parser,
            served_model_name=served_model_name,
            api_key=api_key,
            extra_args=extra_args,
            command=command,
            python_executable=python_executable,
            env=env,
            log_path=log_path,
            startup_timeout=startup_timeout,
            shutdown_timeout=shutdown_timeout,
        )
        return cls(
            server,
            model=model,
            chat_backend=chat_backend,
            max_concurrency=max_concurrency,
            request_timeout=request_timeout,
        )

    @classmethod
    def attach(
        cls,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_ATTACH_TIMEOUT,
        model: str | None = None,
        chat_backend: Backend | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> SGLangBackend:
        """A backend on a server that is already running; it is health-checked on entry, never stopped.

        Args:
            base_url: The server's root URL, e.g. ``http://127.0.0.1:30000``.
            api_key: The server's ``--api-key``, if any.
            timeout: Seconds the server may take to answer its health check.
            model: The model id for chat requests.
            chat_backend: The backend for ``generate``.
            max_concurrency: Requests in flight at once.
            request_timeout: Seconds one native request may take.
        """
        server = SGLangServer.attach(base_url, api_key=api_key, timeout=timeout)
        return cls(
            server,
            model=model,
            chat_backend=chat_backend,
            max_concurrency=max_concurrency,
            request_timeout=request_timeout,
        )

    def __repr__(self) -> str:
        return (
            f"SGLangBackend(server={self.server!r}, model={self.model!r}, "
            f"max_concurrency={self.max_concurrency})"
        )

    @property
    def base_url(self) -> str:
        """The server's root URL; the OpenAI-compatible API is under ``/v1``."""
        return self.server.base_url

    @property
    def native(self) -> SGLangNativeClient:
        """The client of SGLang's own API (one pooled session, created on first use)."""
        if self._native is None:
            self._native = SGLangNativeClient(
                self.server.base_url,
                api_key=self.server.api_key,
                timeout=self.request_timeout,
                max_connections=max(self.max_concurrency, 16),
                server=self.server,
            )
        return self._native

    @property
    def chat_backend(self) -> Backend:
        """The backend ``generate`` delegates to (an `OpenAIBackend` on ``/v1`` unless one was given)."""
        if self._chat_backend is None:
            self._chat_backend = _openai_backend(
                f"{self.server.base_url}/v1", self.model, self.server.api_key, self.max_concurrency
            )
        return self._chat_backend

    async def start(self) -> None:
        """Launch the server (or health-check an attached one) and wait until it is healthy.

        Raises:
            SGLangServerError: The server died or did not become healthy; the message quotes its log.
        """
        if self.server.launched and self.server.pid is not None:
            return
        await self.server.start()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        """Generate through ``/v1/chat/completions`` with the chat backend.

        Raises:
            pacore_agent.exceptions.BackendError: As the chat backend raises them.
        """
        try:
            return await self.chat_backend.generate(request, on_delta=on_delta)
        except EndpointConnectionError as exc:
            died = await self._death_error("during POST /v1/chat/completions")
            if died is not None:
                raise died from exc
            raise

    async def generate_ids(
        self,
        input_ids: Sequence[int] | Sequence[Sequence[int]],
        sampling: Mapping[str, Any] | None = None,
        *,
        return_logprob: bool = True,
        n: int = 1,
        logprob_start_len: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> list[NativeCompletion]:
        """Native ``/generate`` with token ids and logprobs; see `SGLangNativeClient.generate_ids`."""
        async with self.limiter:
            return await self.native.generate_ids(
                input_ids,
                sampling,
                return_logprob=return_logprob,
                n=n,
                logprob_start_len=logprob_start_len,
                extra=extra,
            )

    async def update_weights_from_disk(
        self,
        model_path: str | os.PathLike[str],
        *,
        load_format: str | None = None,
        abort_all_requests: bool = False,
        weight_version: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> WeightUpdateResult:
        """Load new weights in place; see `SGLangNativeClient.update_weights_from_disk`."""
        return await self.native.update_weights_from_disk(
            model_path,
            load_format=load_format,
            abort_all_requests=abort_all_requests,
            weight_version=weight_version,
            extra=extra,
        )

    async def update_weights_from_tensor(
        self,
        serialized_named_tensors: Sequence[str],
        *,
        load_format: str | None = None,
        flush_cache: bool = True,
        abort_all_requests: bool = False,
        weight_version: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> WeightUpdateResult:
        """Load serialized tensors in place; see `SGLangNativeClient.update_weights_from_tensor`."""
        return await self.native.update_weights_from_tensor(
            serialized_named_tensors,
            load_format=load_format,
            flush_cache=flush_cache,
            abort_all_requests=abort_all_requests,
            weight_version=weight_version,
            extra=extra,
        )

    async def flush_cache(self) -> None:
        """Empty the prefix cache; see `SGLangNativeClient.flush_cache`."""
        await self.native.flush_cache()

    async def get_model_info(self) -> dict[str, Any]:
        """The server's model path, weight version, ...; see `SGLangNativeClient.get_model_info`."""
        return await self.native.get_model_info()

    async def health(self, *, generate: bool = False) -> bool:
        """Whether the server answers its health check with 200."""
        return await self.native.health(generate=generate)

    async def aclose(self) -> None:
        """Close the connections and stop a launched server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                if self._owns_chat_backend and self._chat_backend is not None:
                    await self._chat_backend.aclose()
                if self._native is not None:
                    await self._native.aclose()
            finally:
                await self.server.stop()

    async def _death_error(self, context: str) -> SGLangServerError | None:
        if not self.server.launched:
            return None
        await self.server.wait_exited(_DEATH_GRACE)
        return await self.server.death_error(context)


def _openai_backend(base_url: str, model: str | None, api_key: str | None, max_concurrency: int) -> Backend:
    """The default chat backend: an `OpenAIBackend` (imported on first use; it pulls in the OpenAI SDK)."""
    from pacore_agent.backends.openai_compat import OpenAIBackend

    # SGLang has deprecated `max_tokens` in favour of OpenAI's `max_completion_tokens`.
    return OpenAIBackend(
        base_url, model, api_key=api_key, max_concurrency=max_concurrency, token_limit="max_completion_tokens"
    )
