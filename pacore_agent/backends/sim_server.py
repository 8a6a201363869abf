"""The SIMULATED reasoning model over real HTTP on loopback: ``pacore sim-server``.

Serves ``POST /v1/chat/completions`` (with and without ``stream``, with ``n``), ``GET /v1/models`` and
``GET /health`` like an OpenAI-compatible server, so clients are tested over the same wire as real
endpoints. A client that disconnects cancels its request here, and that is counted
(``engine.disconnects``).

Failures go over the wire as the real servers send them (see `pacore_agent.backends.sim.FAULT_KINDS`):
error bodies in the shape of ``SimConfig.error_style`` (OpenAI, vLLM or SGLang), ``Retry-After`` as
seconds, an HTTP-date or garbage, a reset socket, a connection closed in the middle of a chunked
answer, and vLLM/SGLang's SSE ``data: {"error": {...}}`` chunk followed by ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from pacore_agent.backends.sim import (
    SIM_LABEL,
    SimChoice,
    SimConfig,
    SimEngine,
    SimFault,
    SimReply,
)
from pacore_agent.backends.sim_faults import error_json, stream_error_json
from pacore_agent.backends.sim_worker import (
    DecodeSlots,
    PrefixCache,
    WorkerCounters,
    problem_key,
    synthesis_problem,
)
from pacore_agent.serving.app import AppServer

__all__ = ["SimServer"]

_CHUNK_WORDS = 8


def _message_json(choice: SimChoice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.content}
    if choice.reasoning is not None:
        message["reasoning_content"] = choice.reasoning
    return message


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + _CHUNK_WORDS]) + (" " if i + _CHUNK_WORDS < len(words) else "")
        for i in range(0, len(words), _CHUNK_WORDS)
    ]


class SimServer(AppServer):
    """The simulated model served over HTTP, as an async context manager.

    Example::

        async with SimServer(SimConfig(accuracy=0.5)) as server:
            backend = OpenAIBackend(server.base_url)

    Args:
        config: The model's settings, or an engine to share.
        host: Interface to bind (loopback by default).
        port: Port; 0 picks a free one.
        api_key: When set, requests must send ``Authorization: Bearer <api_key>``.
        sleep: How latency is waited (tests may inject a fake).
        clock: Wall clock of the ``Retry-After`` HTTP-dates (``rate_limit_date``).
        capacity: At most this many sequences decode at once (a request with ``n`` choices takes ``n``
            slots; beyond ``capacity`` they decode in turns, each turn taking the request's latency);
            the others queue. ``None``: no limit.
        prefix_cache: Report ``cached_tokens`` for the prompt prefix this server has seen before (by
            blocks of `pacore_agent.backends.sim_worker.DEFAULT_BLOCK_WORDS` words), as a worker's prefix
            cache does; otherwise only a whole repeated prompt counts as cached.
        worker_name: The name ``GET /_sim/stats`` reports.

    Besides the OpenAI API it answers what SGLang's router polls on a worker (``/health``,
    ``/health_generate``, ``/model_info``, ``/server_info`` and their ``/get_`` forms), ``POST
    /flush_cache``, and ``GET /_sim/stats``: this server's counters (`stats`).
    """

    def __init__(
        self,
        config: SimConfig | SimEngine | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        capacity: int | None = None,
        prefix_cache: bool = False,
        worker_name: str = "",
    ) -> None:
        self.engine = config if isinstance(config, SimEngine) else SimEngine(config)
        self.slots = DecodeSlots(capacity) if capacity is not None else None
        self.prefix_cache = PrefixCache() if prefix_cache else None
        self.counters = WorkerCounters(name=worker_name)
        self._api_key = api_key
        self._sleep = sleep
        self._clock = clock
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        # What SGLang's router asks a worker before it registers it (and its /get_ forms, older SGLang).
        for path in (
            "/health_generate",
            "/model_info",
            "/get_model_info",
            "/server_info",
            "/get_server_info",
        ):
            app.router.add_get(path, self._worker_info)
        app.router.add_post("/flush_cache", self._flush_cache)
        app.router.add_get("/_sim/stats", self._stats)
        # handler_cancellation: a client disconnect cancels its handler, as real servers abort the request.
        super().__init__(app, host=host, port=port, runner_options={"handler_cancellation": True})

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, for OpenAI clients."""
        return f"{self.root_url}/v1"

    async def serve_forever(self) -> None:
        """Serve until cancelled (``pacore sim-server``)."""
        async with self:
            await asyncio.Event().wait()

    # -- handlers ----------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "simulated": True})

    def stats(self) -> dict[str, Any]:
        """This server's counters, as ``GET /_sim/stats`` sends them.

        ``served``: answers delivered; ``arrived``: requests received;
        ``prompt_tokens`` / ``cached_tokens``: of the requests received; ``decoding`` / ``queued`` /
        ``max_decoding``: sequences decoding, requests waiting for a decode slot, and the most decoding
        at once (with ``capacity``); ``synthesis``: synthesis-round choices received, by a key of their prompt (one per problem and
        round).
        """
        engine, counters, slots = self.engine, self.counters, self.slots
        return {
            "worker": counters.name,
            "served": engine.served,
            "arrived": counters.arrived,
            "prompt_tokens": counters.prompt_tokens,
            "cached_tokens": counters.cached_tokens,
            "in_flight": engine.in_flight,
            "max_in_flight": engine.max_in_flight,
            "disconnects": engine.disconnects,
            "capacity": slots.size if slots else None,
            "decoding": slots.busy if slots else engine.in_flight,
            "queued": slots.queued if slots else 0,
            "max_decoding": slots.max_busy if slots else engine.max_in_flight,
            "synthesis": dict(counters.synthesis),
        }

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _worker_info(self, request: web.Request) -> web.Response:
        model = self.engine.config.model
        if request.path.endswith("model_info"):
            return web.json_response(
                {"model_path": model, "tokenizer_path": None, "is_generation": True, "simulated": True}
            )
        if request.path.endswith("server_info"):
            return web.json_response({"model_path": model, "dp_size": 1, "tp_size": 1, "simulated": True})
        return web.json_response({"status": "ok", "simulated": True})

    async def _flush_cache(self, request: web.Request) -> web.Response:
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        return web.Response(text="Cache flushed.\nPlease check backend logs for more details.")

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._check_auth(request)) is not None:
            return denied
        model = {
            "id": self.engine.config.model,
            "object": "model",
            "owned_by": "pacore-simulated",
            "created": 0,
        }
        return web.json_response({"object": "list", "data": [model]})

    def _error(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        body = error_json(self.engine.config.wire_style, status, message, param=param, code=code)
        return web.json_response(body, status=status, headers=headers)

    def _check_auth(self, request: web.Request) -> web.Response | None:
        if self._api_key is None:
            return None
        if request.headers.get("Authorization", "") != f"Bearer {self._api_key}":
            return self._error(401, "Incorrect API key provided (simulated server)", code="invalid_api_key")
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._check_auth(request)) is not None:
            return denied
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return self._error(400, "request body must be a JSON object")
        engine = self.engine
        with engine.track():
            try:
                if self.slots is None:
                    return await self._answer(request, body)
                async with self.slots.hold(int(body.get("n") or 1) if engine.config.honour_n else 1):
                    return await self._answer(request, body)
            except asyncio.CancelledError:
                engine.disconnects += 1
                raise

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        reply = self.engine.respond(body)
        if isinstance(reply, SimReply):
            reply = self._count(body, reply)
        if isinstance(reply, SimFault):
            return await self._fault(request, reply)
        stream = bool(body.get("stream"))
        if not stream:
            if reply.latency is None:
                await asyncio.Event().wait()  # a stall: only the client's disconnect ends it
            await self._sleep(reply.latency or 0.0)
            if reply.cut is not None:
                return await self._cut_body(request, reply)
            self.engine.record_served(reply)
            return web.json_response(self._completion_json(reply))
        return await self._stream(request, body, reply)

    def _count(self, body: dict[str, Any], reply: SimReply) -> SimReply:
        """Count a request in the worker counters; the prefix cache decides its ``cached_tokens``."""
        counters, messages = self.counters, body["messages"]
        if self.prefix_cache is not None:
            cached = self.prefix_cache.lookup_and_insert(messages)
            reply = replace(reply, usage=reply.usage.model_copy(update={"cached_tokens": cached}))
        if self.slots is not None and reply.latency is not None and len(reply.choices) > self.slots.size:
            # More sequences than decode slots: they decode in turns, as a full batch does.
            reply = replace(reply, latency=reply.latency * math.ceil(len(reply.choices) / self.slots.size))
        counters.arrived += 1
        counters.prompt_tokens += reply.usage.prompt_tokens
        counters.cached_tokens += reply.usage.cached_tokens
        if synthesis_problem(messages) is not None:
            # One key per synthesis prompt P(x, M): a problem's round, whose K requests share it.
            counters.synthesis[problem_key(json.dumps(messages, sort_keys=True))] += len(reply.choices)
        return reply

    async def _fault(self, request: web.Request, fault: SimFault) -> web.StreamResponse:
        if fault.kind == "stall":
            await asyncio.Event().wait()
        if fault.kind == "drop":
            # A reset socket (RST), as when a server process dies or a proxy gives up.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never delivered: the connection is gone
        if fault.kind == "malformed":
            return web.Response(
                status=200, text='{"id": "chatcmpl-sim", "choices": [', content_type="application/json"
            )
        if fault.kind == "empty_choices":
            return web.json_response(
                {
                    "id": f"chatcmpl-sim-{uuid.uuid4().hex[:12]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": self.engine.config.model,
                    "choices": [],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                }
            )
        headers: dict[str, str] = {}
        if fault.kind == "rate_limit" and fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        elif fault.kind == "rate_limit_date" and fault.retry_after is not None:
            headers["Retry-After"] = email.utils.formatdate(self._clock() + fault.retry_after, usegmt=True)
        elif fault.kind == "rate_limit_malformed":
            headers["Retry-After"] = "soon"
        return self._error(
            fault.status, fault.message, param=fault.param, code=fault.code, headers=headers or None
        )

    async def _cut_body(self, request: web.Request, reply: SimReply) -> web.StreamResponse:
        """A non-streamed answer whose connection closes part-way through its body."""
        data = json.dumps(self._completion_json(reply)).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: int(len(data) * self.engine.config.faults.stream_cut)])
        self._close(request)
        return response

    @staticmethod
    def _close(request: web.Request) -> None:
        # close(), not abort(): what was written is flushed, then the peer sees the body end early.
        if request.transport is not None:
            request.transport.close()

    def _completion_json(self, reply: SimReply) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-sim-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model,
            "system_fingerprint": "pacore-simulated",
            "choices": [
                {"index": i, "message": _message_json(c), "finish_reason": c.finish_reason, "logprobs": None}
                for i, c in enumerate(reply.choices)
            ],
            **({"usage": reply.usage.to_openai()} if self.engine.config.send_usage else {}),
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: SimReply
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        ident = f"chatcmpl-sim-{uuid.uuid4().hex[:12]}"

        async def send(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> None:
            chunk: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": reply.model,
                "choices": choices,
            }
            if usage is not None:
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        plans: list[list[tuple[str, str]]] = []
        for choice in reply.choices:
            plan = [
                ("reasoning_content", piece) for piece in _pieces(choice.reasoning or "") if choice.reasoning
            ]
            plan += [("content", piece) for piece in _pieces(choice.content)]
            plans.append(plan)
        steps = max(len(plan) for plan in plans)
        cut = reply.cut
        if cut is not None:
            # Some of the answer goes out (at least one piece), then the fault strikes.
            steps = max(1, min(steps - 1, int(steps * self.engine.config.faults.stream_cut)))
        pause = None if reply.latency is None else reply.latency / max(steps - 1, 1)
        for index in range(len(reply.choices)):
            await send(
                [{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
        for step in range(steps):
            # The first piece goes out at once (time to first token); a stalled request then hangs.
            if step > 0 and pause is None:
                await asyncio.Event().wait()
            elif step > 0 and pause is not None:
                await self._sleep(pause)
            for index, plan in enumerate(plans):
                if step < len(plan):
                    field, text = plan[step]
                    await send([{"index": index, "delta": {field: text}, "finish_reason": None}])
        if cut is not None:
            if cut.kind == "stream_drop":
                self._close(request)
                return response
            # vLLM and SGLang: the error as one more `data:` chunk, then the usual end of stream.
            error = stream_error_json(self.engine.config.wire_style, cut.status, cut.message)
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        for index, choice in enumerate(reply.choices):
            await send([{"index": index, "delta": {}, "finish_reason": choice.finish_reason}])
        if (body.get("stream_options") or {}).get("include_usage") and self.engine.config.send_usage:
            await send([], reply.usage.to_openai())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.engine.record_served(reply)
        return response


def banner(server: SimServer) -> str:
    """The start-up line of ``pacore sim-server``, labelled as simulated."""
    config = server.engine.config
    return (
        f"SIMULATED reasoning endpoint {SIM_LABEL} at {server.base_url} "
        f"model={config.model} accuracy={config.accuracy} seed={config.seed}"
    )
