"""An OpenAI-compatible server that answers with PaCoRe: ``pacore serve``.

Clients speak the chat-completions API; the model name picks the method (``pacore-low``,
``pacore-medium``, ``pacore-high``, or ``pacore:[32,4]``), and every trajectory of every round goes to
ONE upstream endpoint fixed by the server's configuration (a request can never redirect it)::

    POST /v1/chat/completions    PaCoRe answer; ``stream: true`` sends live progress, then the final answer
    GET  /v1/models              the three presets
    GET  /health                 liveness (never behind auth)

Streams send each round's progress as ``reasoning_content`` lines, then the final round's reasoning as
it arrives (when the upstream splits it out), then the final trajectory's ``content`` in one piece once
that trajectory has finished. Content is held back until then because a failed attempt is retried from
its first token: a client therefore receives exactly the final trajectory's content, never a failed
attempt's text spliced with the retry's. Reasoning is a live log: when the final attempt restarts, a
``[final round: attempt N restarts after ...]`` line marks where the retry's reasoning begins.

Answers carry the final trajectory (its content and ``reasoning_content``), the usage summed over every
trajectory of every round, and a ``pacore`` field with the trace summary (widths, calls, tokens). Errors
are OpenAI-style bodies ``{"error": {"message", "type", "param", "code"}}``: 400 bad request, 401 bad
token, 404 unknown model, 413 request too large, 502 the solve failed upstream. A client that
disconnects cancels its solve, and with it the upstream requests.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
from aiohttp import web

from pacore_agent.backends.base import Backend, SamplingParams
from pacore_agent.backends.errors import error_response, mask_userinfo
from pacore_agent.coordinator import Coordinator
from pacore_agent.exceptions import (
    PacoreError,
    UsageError,
)
from pacore_agent.prompts import Messages, normalize_problem
from pacore_agent.results import (
    AttemptRestarted,
    Done,
    Event,
    RoundFinished,
    RoundStarted,
    SolveResult,
    TokenDelta,
    TrajectoryFinished,
)
from pacore_agent.retry import RetryPolicy
from pacore_agent.schedule import PRESETS, Schedule
from pacore_agent.serving.app import AppServer

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_HOST",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_MAX_TRAJECTORIES",
    "MODEL_PREFIX",
    "PRESET_MODELS",
    "PacoreServer",
    "schedule_for_model",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
"""Loopback: the server is reachable from other machines only when asked."""

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
"""Largest request body accepted (1 MiB)."""

DEFAULT_MAX_TRAJECTORIES = 512
"""Largest number of trajectories one request may ask for, over all its rounds."""

MODEL_PREFIX = "pacore:"
"""Prefix of a model name that spells the schedule out, e.g. ``pacore:[32,4]`` or ``pacore:32,4``."""

PRESET_MODELS: dict[str, str] = {f"pacore-{name}": name for name in PRESETS}
"""Model names of the presets (listed by ``/v1/models``) and the preset each one runs."""

DEFAULT_HEARTBEAT_S = 15.0
"""Seconds between keep-alive comments of an idle stream."""

_SHUTDOWN_TIMEOUT = 5.0
"""Seconds a stopping server waits for requests in flight before cancelling them."""

_OWNER = "pacore"


class _ApiError(Exception):
    """An error to answer with an OpenAI-style body."""

    def __init__(
        self, status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status)


def _bad_request(message: str, *, param: str | None = None, code: str | None = None) -> _ApiError:
    return _ApiError(400, message, "invalid_request_error", param=param, code=code)


def _valid_models() -> str:
    return f"{', '.join(PRESET_MODELS)}, or {MODEL_PREFIX}<widths> such as {MODEL_PREFIX}[32,4]"


class _UnknownModel(UsageError):
    """The model name selects no schedule (answered with 404)."""


def schedule_for_model(model: str, *, max_trajectories: int = DEFAULT_MAX_TRAJECTORIES) -> Schedule:
    """The schedule a model name selects.

    Args:
        model: ``pacore-low``, ``pacore-medium``, ``pacore-high``, or ``pacore:`` followed by widths
            (``pacore:[32,4]``, ``pacore:32,4``) or a preset name (``pacore:high``).
        max_trajectories: Cap on the trajectories of all rounds together, the final round included.

    Raises:
        UsageError: The name selects no schedule, or one above ``max_trajectories``.
    """
    if model in PRESET_MODELS:
        schedule = Schedule.parse(PRESET_MODELS[model])
    elif model.startswith(MODEL_PREFIX):
        try:
            # The cap below is the server's; Schedule's own message would name a Python argument.
            schedule = Schedule.parse(model[len(MODEL_PREFIX) :], max_width=sys.maxsize)
        except UsageError as error:
            raise _UnknownModel(
                f"the model {model!r} does not name a schedule ({error}); use {_valid_models()}"
            ) from None
    else:
        raise _UnknownModel(
            f"the model {model!r} does not exist on this PaCoRe server; use {_valid_models()}"
        )
    total = sum(schedule.rounds)
    if total > max_trajectories:
        raise UsageError(
            f"the model {model!r} runs {total} trajectories {list(schedule.rounds)}, above this server's "
            f"limit of {max_trajectories} per request"
        )
    return schedule


@dataclass(frozen=True)
class _ChatRequest:
    """A validated chat-completions request."""

    model: str
    schedule: Schedule
    messages: Messages
    sampling: SamplingParams
    seed: int
    stream: bool
    include_usage: bool


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad_request(f"{name} must be a number, got {value!r}", param=name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_request(f"{name} must be an integer, got {value!r}", param=name)
    return value


def _summary(result: SolveResult) -> dict[str, Any]:
    """The trace summary sent to clients: counts and totals, no prompts, URLs or keys."""
    rounds = []
    for round_ in result.rounds:
        statuses = [t.status for t in round_.trajectories]
        rounds.append(
            {
                "index": round_.index,
                "width": round_.width,
                "ok": statuses.count("ok"),
                "failed": statuses.count("failed"),
                "cancelled": statuses.count("cancelled"),
                "messages": len(round_.messages),
                "completion_tokens": round_.usage.completion_tokens,
                "wall_s": round(round_.wall_s, 3),
                "stop_reason": round_.stop_reason,
            }
        )
    return {
        "method": result.method,
        "widths": result.schedule,
        "rounds": rounds,
        "calls": result.calls,
        "ttc_tokens": result.ttc_tokens,
        "wall_s": round(result.wall_s, 3),
        "answer": result.answer,
    }


def _solve_error(error: BaseException) -> _ApiError:
    # The status, type and code come from the one error translation of pacore (backends.errors); an
    # error that is not pacore's is a 500 whose message never carries the exception's text.
    status, body = error_response(error)
    fields = body["error"]
    message = fields["message"]
    if isinstance(error, PacoreError):
        # Credentials written into an upstream URL (https://user:pass@host) never reach the client.
        message = mask_userinfo(f"PaCoRe could not answer: {error}")
    return _ApiError(status, message, fields["type"], param=fields["param"], code=fields["code"])


class _Progress:
    """Turns coordinator events into the text of progress lines (sent as ``reasoning_content``)."""

    def __init__(self, schedule: Schedule) -> None:
        self.widths = schedule.rounds
        self.finished = 0
        self.failed = 0
        self.messages = 0

    @property
    def last(self) -> int:
        return len(self.widths) - 1

    def line(self, event: Event) -> str | None:
        total = len(self.widths)
        if isinstance(event, RoundStarted):
            self.finished = self.failed = 0
            if event.round == self.last:
                return f"round {event.round + 1}/{total}: final synthesis from {self.messages} messages\n"
            what = "trajectories" if event.width > 1 else "trajectory"
            return f"round {event.round + 1}/{total}: {event.width} {what} started\n"
        if isinstance(event, TrajectoryFinished) and event.trajectory.round != self.last:
            self.finished += 1
            self.failed += not event.trajectory.ok
            width = self.widths[event.trajectory.round]
            failed = f" ({self.failed} failed)" if self.failed else ""
            return f"round {event.trajectory.round + 1}: {self.finished}/{width} finished{failed}\n"
        if isinstance(event, RoundFinished) and event.result.index != self.last:
            self.messages = len(event.result.messages)
            return f"round {event.result.index + 1}/{total} done: {self.messages} messages to synthesize\n"
        return None


class _Chunks:
    """Writes the server-sent events of one streamed response (one writer at a time)."""

    def __init__(self, response: web.StreamResponse, model: str) -> None:
        self.response = response
        self.model = model
        self.ident = f"chatcmpl-pacore-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self._lock = anyio.Lock()

    async def write(self, data: bytes) -> None:
        async with self._lock:
            await self.response.write(data)

    async def send(self, data: Mapping[str, Any]) -> None:
        await self.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())

    async def chunk(
        self,
        delta: Mapping[str, Any] | None,
        *,
        finish_reason: str | None = None,
        **extra: Any,
    ) -> None:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        await self.send(
            {
                "id": self.ident,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    async def done(self) -> None:
        await self.write(b"data: [DONE]\n\n")

    async def heartbeat(self, interval: float) -> None:
        """Send an SSE comment every ``interval`` seconds, so idle connections are not timed out."""
        try:
            while True:
                await anyio.sleep(interval)
                await self.write(b": keep-alive\n\n")
        except ConnectionResetError:
            return  # the client is gone; the solve is being cancelled


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PacoreServer(AppServer):
    """An OpenAI-compatible HTTP server answering with PaCoRe over one upstream backend.

    Example::

        async with OpenAIBackend("http://127.0.0.1:30000/v1", "PaCoRe-8B") as upstream:
            async with PacoreServer(upstream, port=8000) as server:
                print(server.base_url)  # point any OpenAI client here, model="pacore-high"
                await anyio.sleep_forever()

    The server does not close ``backend``; its concurrency limit is shared by every request.

    Args:
        backend: The upstream every trajectory goes to. Requests cannot change it.
        host: Interface to bind (loopback by default).
        port: Port; 0 picks a free one (see `port` once started).
        api_key: When set, ``/v1/*`` requires ``Authorization: Bearer <api_key>``; ``/health`` stays open.
        max_request_bytes: Largest request body accepted; larger ones get 413.
        max_trajectories: Largest number of trajectories one request may run, all rounds together.
        sampling: Sampling defaults; a request's ``temperature``, ``top_p``, ``max_tokens`` and ``seed``
            override them for every trajectory of its solve.
        retry: Retry policy of the upstream calls (default `RetryPolicy()`).
        coordinator_options: Further `Coordinator` keyword arguments (``compactor``, ``order``,
            ``min_success``, ...), the same for every request.
        heartbeat_s: Seconds between SSE keep-alive comments of a stream (a round can run for many
            minutes before its first trajectory finishes); ``None`` sends none.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        api_key: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_trajectories: int = DEFAULT_MAX_TRAJECTORIES,
        sampling: SamplingParams | None = None,
        retry: RetryPolicy | None = None,
        coordinator_options: Mapping[str, Any] | None = None,
        heartbeat_s: float | None = DEFAULT_HEARTBEAT_S,
    ) -> None:
        if max_request_bytes < 1:
            raise UsageError(f"max_request_bytes must be positive, got {max_request_bytes}")
        if max_trajectories < 2:
            raise UsageError(
                f"max_trajectories must be at least 2 (one round and the final), got {max_trajectories}"
            )
        if heartbeat_s is not None and not heartbeat_s > 0:
            raise UsageError(f"heartbeat_s must be a positive number of seconds or None, got {heartbeat_s}")
        if api_key is not None and not api_key:
            raise UsageError("api_key is empty: pass None to serve without authentication")
        options = dict(coordinator_options or {})
        reserved = {"schedule", "backend", "sampling", "retry", "seed", "stream_tokens"} & set(options)
        if reserved:
            raise UsageError(
                f"coordinator_options must not set {', '.join(sorted(reserved))}: the server does"
            )
        self.backend = backend
        self.max_request_bytes = max_request_bytes
        self.max_trajectories = max_trajectories
        self.sampling = sampling or SamplingParams()
        self.retry = retry or RetryPolicy()
        self.coordinator_options = options
        self.heartbeat_s = heartbeat_s
        self._api_key = api_key
        app = web.Application(client_max_size=max_request_bytes, middlewares=[self._middleware])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        # handler_cancellation: a client that disconnects cancels its solve and the upstream requests.
        options = {"handler_cancellation": True, "shutdown_timeout": _SHUTDOWN_TIMEOUT}
        super().__init__(app, host=host, port=port, runner_options=options)

    def __repr__(self) -> str:
        auth = "on" if self._api_key else "off"
        return f"PacoreServer(host={self.host!r}, port={self.port}, backend={self.backend!r}, auth={auth})"

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, for OpenAI clients."""
        return f"{self.root_url}/v1"

    @property
    def models(self) -> list[str]:
        """The model names listed by ``/v1/models``: one per preset."""
        return list(PRESET_MODELS)

    # -- plumbing ----------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path != "/health":
                self._check_auth(request)
            return await handler(request)
        except _ApiError as error:
            return error.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kind = "invalid_request_error" if exc.status < 500 else "server_error"
            message = f"{request.method} {request.path}: {exc.reason}"
            return _ApiError(exc.status, message, kind).response()
        except Exception as error:
            logger.exception("unexpected error answering %s %s", request.method, request.path)
            return _solve_error(error).response()

    def _check_auth(self, request: web.Request) -> None:
        if self._api_key is None:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            message = "missing API key: send the header 'Authorization: Bearer <key>'"
        elif scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._api_key.encode()
        ):
            message = "incorrect API key provided"
        else:
            return
        raise _ApiError(401, message, "invalid_request_error", code="invalid_api_key")

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        limit = self.max_request_bytes
        too_large = _ApiError(
            413,
            f"request body exceeds this server's limit of {limit:,} bytes (--max-request-bytes)",
            "invalid_request_error",
            code="request_too_large",
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _bad_request("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _bad_request("request body must be a JSON object")
        return body

    def _parse(self, body: Mapping[str, Any]) -> _ChatRequest:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad_request(f"model is required: use {_valid_models()}", param="model")
        try:
            schedule = schedule_for_model(model, max_trajectories=self.max_trajectories)
        except _UnknownModel as error:
            raise _ApiError(
                404, str(error), "invalid_request_error", param="model", code="model_not_found"
            ) from None
        except UsageError as error:
            raise _bad_request(str(error), param="model", code="schedule_too_large") from None
        if "messages" not in body:
            raise _bad_request("messages is required: a non-empty list of chat messages", param="messages")
        messages = body["messages"]
        if not isinstance(messages, list):
            raise _bad_request("messages must be a list of chat messages", param="messages")
        try:
            messages = normalize_problem(messages)
        except UsageError as error:
            raise _bad_request(str(error), param="messages") from None
        n = _integer(body, "n")
        if n is not None and n != 1:
            raise _bad_request(
                f"n={n} is not supported: each request returns one PaCoRe answer (send separate requests)",
                param="n",
            )
        changes: dict[str, Any] = {}
        for name in ("temperature", "top_p"):
            if (number := _number(body, name)) is not None:
                changes[name] = number
        max_tokens = _integer(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _integer(body, "max_tokens")
        if max_tokens is not None:
            changes["max_tokens"] = max_tokens
        seed = _integer(body, "seed")
        if seed is not None:
            changes["seed"] = seed
        try:
            sampling = self.sampling.with_(**changes)
        except UsageError as error:
            raise _bad_request(str(error)) from None
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise _bad_request(f"stream must be true or false, got {stream!r}", param="stream")
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, Mapping):
            raise _bad_request("stream_options must be an object", param="stream_options")
        return _ChatRequest(
            model=model,
            schedule=schedule,
            messages=messages,
            sampling=sampling,
            seed=seed if seed is not None else 0,
            stream=bool(stream),
            include_usage=bool(stream_options.get("include_usage")),
        )

    def _coordinator(self, chat: _ChatRequest) -> Coordinator:
        try:
            return Coordinator(
                chat.schedule,
                self.backend,
                sampling=chat.sampling,
                seed=chat.seed,
                retry=self.retry,
                max_width=self.max_trajectories,
                **self.coordinator_options,
            )
        except UsageError as error:
            raise _bad_request(str(error)) from None

    # -- handlers ----------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": _OWNER} for name in PRESET_MODELS]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        chat = self._parse(await self._read_json(request))
        coordinator = self._coordinator(chat)
        if chat.stream:
            return await self._stream(request, chat, coordinator)
        try:
            result = await coordinator.solve(chat.messages)
        except PacoreError as error:
            logger.warning("solve failed (%s): %s", chat.model, error)
            raise _solve_error(error) from None
        self._log(chat, result)
        return web.json_response(self._completion(chat, result))

    def _log(self, chat: _ChatRequest, result: SolveResult) -> None:
        logger.info(
            "%s: %d calls, %d tokens generated, %.2f s",
            chat.model,
            result.calls,
            result.ttc_tokens,
            result.wall_s,
        )

    def _completion(self, chat: _ChatRequest, result: SolveResult) -> dict[str, Any]:
        final = result.final
        message: dict[str, Any] = {"role": "assistant", "content": final.content if final else None}
        if final is not None and final.reasoning is not None:
            message["reasoning_content"] = final.reasoning
        return {
            "id": f"chatcmpl-pacore-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": chat.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": (final.finish_reason if final else None) or "stop",
                    "logprobs": None,
                }
            ],
            "usage": result.usage.to_openai(),
            "pacore": _summary(result),
        }

    async def _stream(
        self, request: web.Request, chat: _ChatRequest, coordinator: Coordinator
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        chunks = _Chunks(response, chat.model)
        async with anyio.create_task_group() as group:
            if self.heartbeat_s is not None:
                group.start_soon(chunks.heartbeat, self.heartbeat_s)
            await self._pump(chunks, chat, coordinator)
            group.cancel_scope.cancel()
        return response

    async def _pump(self, chunks: _Chunks, chat: _ChatRequest, coordinator: Coordinator) -> None:
        """Run the solve, turning its events into chunks; errors end the stream, never escape."""
        progress = _Progress(chat.schedule)
        reasoning_streamed = False  # only whether: the text itself is not kept
        try:
            await chunks.chunk({"role": "assistant", "content": ""})
            # Closed explicitly: when a write fails, the solve's task group must end in this task.
            events = coordinator.stream(chat.messages)
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, TokenDelta):
                        # Content waits for the final trajectory to finish (see the module docstring):
                        # a retried attempt's text must never reach the client spliced with the retry's.
                        if event.round == progress.last and event.field == "reasoning":
                            reasoning_streamed = True
                            await chunks.chunk({"reasoning_content": event.text})
                    elif isinstance(event, AttemptRestarted):
                        if event.round == progress.last:
                            notice = f"\n[final round: attempt {event.attempt} restarts after {event.error.type}]\n"
                            reasoning_streamed = True
                            await chunks.chunk({"reasoning_content": notice})
                    elif isinstance(event, Done):
                        await self._finish(chunks, chat, event.result, reasoning_streamed)
                    elif (line := progress.line(event)) is not None:
                        await chunks.chunk({"reasoning_content": line})
        except ConnectionResetError:
            logger.info("%s: the client went away; solve cancelled", chat.model)
        except Exception as error:
            # The status line is sent: the error can only go into the stream.
            if isinstance(error, PacoreError):
                logger.warning("solve failed (%s): %s", chat.model, error)
            else:
                logger.exception("unexpected error streaming %s", chat.model)
            await self._fail(chunks, _solve_error(error))

    async def _fail(self, chunks: _Chunks, error: _ApiError) -> None:
        try:
            await chunks.send(error.body())
            await chunks.done()
        except ConnectionResetError:
            pass

    async def _finish(
        self, chunks: _Chunks, chat: _ChatRequest, result: SolveResult, reasoning_streamed: bool
    ) -> None:
        final = result.final
        if final is not None:
            # The content of the trajectory that finished, whole; its reasoning too unless it streamed.
            delta = (
                {"reasoning_content": final.reasoning} if final.reasoning and not reasoning_streamed else {}
            )
            if final.content:
                delta["content"] = final.content
            if delta:
                await chunks.chunk(delta)
        finish_reason = (final.finish_reason if final else None) or "stop"
        await chunks.chunk({}, finish_reason=finish_reason, pacore=_summary(result))
        if chat.include_usage:
            await chunks.chunk(None, usage=result.usage.to_openai())
        await chunks.done()
        self._log(chat, result)
