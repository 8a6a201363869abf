"""`SGLangBackend`: the `Backend` on an SGLang server, chat through its OpenAI-compatible endpoint.

``generate`` goes through ``/v1/chat/completions`` with a chat backend (an `OpenAIBackend` unless one is
given); the native client and the weight updates are there for training.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio

from pacore_agent.backends.base import (
    DEFAULT_MAX_CONCURRENCY,
    Backend,
    Completion,
    DeltaCallback,
    GenerationRequest,
)
from pacore_agent.backends.sglang.native import (
    DEFAULT_REQUEST_TIMEOUT,
    SGLangNativeClient,
)
from pacore_agent.backends.sglang.process import (
    SGLangServer,
)
from pacore_agent.exceptions import EndpointConnectionError

__all__ = ["SGLangBackend"]


_BACKEND_OPTIONS = frozenset({"model", "chat_backend", "max_concurrency", "request_timeout"})


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` split into `SGLangBackend`'s own and the server's."""
    mine = {k: v for k, v in options.items() if k in _BACKEND_OPTIONS}
    return mine, {k: v for k, v in options.items() if k not in _BACKEND_OPTIONS}


P = ParamSpec("P")
R = TypeVar("R")


def _on_native(
    method: Callable[Concatenate[SGLangNativeClient, P], Awaitable[R]], *, limited: bool = False
) -> Callable[Concatenate[SGLangBackend, P], Awaitable[R]]:
    """A method of `SGLangBackend` that is the same method of its native client (one signature, one doc).

    Args:
        method: The `SGLangNativeClient` method.
        limited: Hold a slot of the backend's limiter for the call (generation shares the endpoint's
            concurrency limit with chat requests).
    """

    async def call(self: SGLangBackend, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not limited:
            return await method(self.native, *args, **kwargs)
        async with self.limiter:
            return await method(self.native, *args, **kwargs)

    call.__name__ = method.__name__
    call.__qualname__ = f"SGLangBackend.{method.__name__}"
    call.__doc__ = method.__doc__
    return call


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
    def launch(cls, model_path: str | os.PathLike[str], /, **options: Any) -> SGLangBackend:
        """A backend that launches its own SGLang server on entry and stops it on exit.

        Args:
            model_path: The model to serve (``--model-path``).
            **options: This class's settings (``model``, ``chat_backend``, ``max_concurrency``,
                ``request_timeout``) and `SGLangServer`'s launch settings (``port``, ``tp_size``,
                ``reasoning_parser``, ``api_key``, ``admin_api_key``, ``extra_args``, ...).

        Raises:
            UsageError: Inconsistent settings.
            TypeError: An option neither class takes.
        """
        mine, server = _split_options(options)
        return cls(SGLangServer(model_path, **server), **mine)

    @classmethod
    def attach(cls, base_url: str, /, **options: Any) -> SGLangBackend:
        """A backend on a server that is already running; it is health-checked on entry, never stopped.

        Args:
            base_url: The server's root URL, e.g. ``http://127.0.0.1:30000``.
            **options: This class's settings (``model``, ``chat_backend``, ``max_concurrency``,
                ``request_timeout``) and `SGLangServer.attach`'s (``api_key``, ``admin_api_key``,
                ``timeout``, ``health_generate``).

        Raises:
            TypeError: An option neither class takes.
        """
        mine, server = _split_options(options)
        return cls(SGLangServer.attach(base_url, **server), **mine)

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
                admin_api_key=self.server.admin_api_key,
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
            died = await self.server.lost_connection_error("during POST /v1/chat/completions")
            if died is not None:
                raise died from exc
            raise

    generate_ids = _on_native(SGLangNativeClient.generate_ids, limited=True)
    update_weights_from_disk = _on_native(SGLangNativeClient.update_weights_from_disk)
    update_weights_from_tensor = _on_native(SGLangNativeClient.update_weights_from_tensor)
    flush_cache = _on_native(SGLangNativeClient.flush_cache)
    get_model_info = _on_native(SGLangNativeClient.get_model_info)
    health = _on_native(SGLangNativeClient.health)

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


def _openai_backend(base_url: str, model: str | None, api_key: str | None, max_concurrency: int) -> Backend:
    """The default chat backend: an `OpenAIBackend` on the server's ``/v1`` (imported on first use)."""
    from pacore_agent.backends.openai_compat import OpenAIBackend

    # SGLang has deprecated `max_tokens` in favour of OpenAI's `max_completion_tokens`.
    return OpenAIBackend(
        base_url, model, api_key=api_key, max_concurrency=max_concurrency, token_limit="max_completion_tokens"
    )
