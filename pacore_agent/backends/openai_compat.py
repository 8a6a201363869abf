"""Any OpenAI-compatible chat endpoint (SGLang, vLLM, hosted APIs), over pooled aiohttp connections.

One `ChatTransport` per backend (`pacore_agent.backends.openai_http`): the same path for local and
hosted endpoints, a third of the client CPU per request of the ``openai`` SDK. Error answers become
`pacore_agent.exceptions` there, by `pacore_agent.backends.errors`.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlparse

import anyio

from pacore_agent.backends.base import (
    DEFAULT_MAX_CONCURRENCY,
    Backend,
    Completion,
    DeltaCallback,
    GenerationRequest,
)
from pacore_agent.backends.openai_http import ChatTransport
from pacore_agent.exceptions import (
    ConfigurationError,
    MalformedResponseError,
    UnsupportedParameterError,
    UsageError,
)
from pacore_agent.results import Usage

__all__ = ["DEFAULT_TIMEOUT", "OpenAIBackend", "estimate_usage", "is_local_url"]

logger = logging.getLogger(__name__)

_TOKEN_LIMITS = ("max_completion_tokens", "max_tokens")

DEFAULT_TIMEOUT = 7200.0
"""Seconds a request may take; long reasoning without streaming needs hours (as the official pipeline)."""


def is_local_url(url: str) -> bool:
    """Whether ``url`` points at this machine or a private network (no API key needed)."""
    host = urlparse(url).hostname or ""
    if host in ("localhost", "") or host.endswith((".local", ".internal", ".localhost")) or "." not in host:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def _usage(raw: Any) -> Usage | None:
    # Bodies come from `json.loads`: plain dicts (checked as `dict`, not the slower `Mapping`).
    if not isinstance(raw, dict):
        return None
    details = raw.get("completion_tokens_details")
    prompt_details = raw.get("prompt_tokens_details")
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        reasoning_tokens=int(details.get("reasoning_tokens") or 0) if isinstance(details, dict) else 0,
        cached_tokens=int(prompt_details.get("cached_tokens") or 0)
        if isinstance(prompt_details, dict)
        else 0,
    )


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The error that stopped a task group (not the cancellations it caused in the other tasks)."""
    errors = [error for error in _leaves(group) if not isinstance(error, anyio.get_cancelled_exc_class())]
    return errors[0] if errors else None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for error in group.exceptions:
        out += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return out


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: only the text ones count here
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return content if isinstance(content, str) else ""


def estimate_usage(
    count: Callable[[str], int], messages: Sequence[Mapping[str, Any]], completions: Sequence[Completion]
) -> None:
    """Set each completion's usage from token counts made with ``count``, marked ``estimated``.

    The prompt is counted once, on the first completion (as `Usage.split` places it); each completion
    counts its content and reasoning.
    """
    prompt = sum(count(_text_of(message)) for message in messages)
    for index, completion in enumerate(completions):
        reasoning = count(completion.reasoning) if completion.reasoning else 0
        completion.usage = Usage(
            prompt_tokens=prompt if index == 0 else 0,
            completion_tokens=count(completion.content or "") + reasoning,
            reasoning_tokens=reasoning,
            estimated=True,
        )


def _tiktoken_counter() -> Callable[[str], int]:
    from pacore_agent.tokenizers import tiktoken_encoding

    encoding = tiktoken_encoding("o200k_base")
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def _reasoning_of(message: Mapping[str, Any]) -> str | None:
    # SGLang and older vLLM say `reasoning_content`; newer vLLM and some hosted APIs say `reasoning`.
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str):
            return value
    return None


class OpenAIBackend(Backend):
    """A chat-completions endpoint speaking the OpenAI API.

    Args:
        base_url: The endpoint's base URL, e.g. ``http://127.0.0.1:30000/v1``.
        model: Model id; when ``None``, the endpoint's only model (from ``/v1/models``) is used.
        api_key: The key; never logged or shown in reprs. Default: ``PACORE_API_KEY``, then
            ``OPENAI_API_KEY``; required for hosted endpoints, optional for local servers.
        max_concurrency: Requests in flight at once against this endpoint.
        stream: Stream responses (collected before returning): long generations then never hit a
            read timeout, and callers can watch tokens arrive.
        timeout: Seconds a request may take (between chunks when streaming).
        extra_headers: Headers sent with every request.
        extra_body: JSON fields added to every request (request-level ``extra_body`` wins).
        supports_n: Whether the server honours ``n``; ``None`` finds out from the first answer (a server
            that ignores ``n`` returns fewer choices; the rest are then requested one by one).
        token_limit: The field that carries `SamplingParams.max_tokens`: ``"max_completion_tokens"``
            (OpenAI's current name; SGLang has deprecated ``max_tokens``), ``"max_tokens"`` (what every
            OpenAI-compatible server knows), or ``"auto"``: the first for hosted endpoints, the second
            for local ones.
        token_counter: Counts the tokens of a text, for the usage of answers that carry none (marked
            `Usage.estimated`); default: tiktoken's ``o200k_base``, loaded offline. Pass the model's own
            tokenizer for exact counts, e.g. ``lambda text: len(tokenizer.encode(text))``.

    Requests adapt to the endpoint: when it answers 400 naming a field it does not support (OpenAI's
    ``unsupported_parameter`` / ``unsupported_value``, as GPT-5 and the o-series answer ``top_p``,
    ``max_tokens`` or a temperature other than 1), the field is dropped (a token limit is renamed to the
    other name instead) for every later request to this endpoint, one warning names it, and the request
    is sent again at once; that resend is not a failed attempt. Each field is adapted at most once.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        stream: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        supports_n: bool | None = None,
        token_limit: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto",
        token_counter: Callable[[str], int] | None = None,
    ) -> None:
        super().__init__(max_concurrency=max_concurrency)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if token_limit not in ("auto", *_TOKEN_LIMITS):
            raise UsageError(
                f"token_limit must be 'auto', 'max_completion_tokens' or 'max_tokens'; got {token_limit!r}"
            )
        if not base_url or "://" not in base_url:
            raise ConfigurationError(
                f"base_url must be a URL like http://127.0.0.1:30000/v1, got {base_url!r}"
            )
        api_key = api_key or os.environ.get("PACORE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.transport = ChatTransport(
            base_url.rstrip("/"),
            api_key=api_key,
            timeout=timeout,
            max_connections=max(max_concurrency * 2, 16),
            extra_headers=extra_headers,
        )
        """The HTTP connection pool and its error translation."""
        self.base_url = self.transport.base_url  # any user:password shown as ***: messages quote it
        self.model = model
        self.name = model or self.base_url
        self.stream = self.streams = stream
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})
        self.supports_n = supports_n
        if not api_key and not is_local_url(self.base_url):
            raise ConfigurationError(
                f"API key missing for the hosted endpoint {self.base_url}: pass api_key=... or set PACORE_API_KEY "
                "(or OPENAI_API_KEY)"
            )
        self._model_lock = anyio.Lock()
        if token_limit == "auto":
            token_limit = "max_tokens" if is_local_url(self.base_url) else "max_completion_tokens"
        self.token_limit: str = token_limit
        self._token_counter = token_counter
        self._renamed: set[str] = set()
        self.refused: dict[str, str] = {}
        """Fields this endpoint refused (name -> the endpoint's code); they are no longer sent."""

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, max_concurrency={self.max_concurrency})"

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by ``token_counter`` (tiktoken's ``o200k_base`` unless one was given)."""
        if self._token_counter is None:
            self._token_counter = _tiktoken_counter()
        return self._token_counter(text)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.transport.aclose()

    async def list_models(self) -> list[str]:
        """Model ids the endpoint serves (``GET /models``)."""
        page = await self.transport.get("/models")
        data = page.get("data") if isinstance(page, dict) else None
        if not isinstance(data, list):
            raise MalformedResponseError(f"{self.base_url}/models sent no list of models")
        return [str(model["id"]) for model in data if isinstance(model, dict) and "id" in model]

    async def resolve_model(self) -> str:
        """The model id requests use: the configured one, or the endpoint's only model."""
        if self.model is not None:
            return self.model
        async with self._model_lock:
            if self.model is None:
                models = await self.list_models()
                if len(models) != 1:
                    listed = ", ".join(models) or "none"
                    raise ConfigurationError(
                        f"{self.base_url} serves {len(models)} models ({listed}): choose one with "
                        "model=... or PACORE_MODEL"
                    )
                self.model = self.name = models[0]
        return self.model

    def _body(self, request: GenerationRequest, model: str, n: int, stream: bool) -> dict[str, Any]:
        sampling = request.sampling
        body: dict[str, Any] = {"model": model, "messages": request.messages}
        if n != 1:
            body["n"] = n
        for key, value in (
            ("temperature", sampling.temperature),
            ("top_p", sampling.top_p),
            (self.token_limit, sampling.max_tokens),
            ("seed", sampling.seed),
            ("stop", list(sampling.stop) if sampling.stop else None),
        ):
            if value is not None:
                body[key] = value
        body.update(self.extra_body)
        body.update(sampling.extra_body)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        for name in self.refused:
            body.pop(name, None)
        return body

    def _adapt(self, error: UnsupportedParameterError, body: Mapping[str, Any]) -> bool:
        """Stop sending the field ``error`` names; whether a resend can help."""
        param = error.param
        if param not in body:
            return False  # not something we sent: nothing to change
        if param == self.token_limit and param in _TOKEN_LIMITS and not self._renamed:
            # The other name of the same limit (OpenAI wants max_completion_tokens, old servers max_tokens).
            other = next(name for name in _TOKEN_LIMITS if name != param)
            self._renamed.add(param)
            self.token_limit = other
            logger.warning(
                "%s refuses '%s' (%s): sending the token limit as '%s' from now on",
                self.base_url, param, error.code, other,
            )  # fmt: skip
            return True
        if param not in self.refused:
            self.refused[param] = error.code
            leaving = "the server's default" if error.code == "unsupported_value" else "it out"
            logger.warning(
                "%s refuses '%s' (%s): leaving %s in every request from now on",
                self.base_url, param, error.code, leaving,
            )  # fmt: skip
        return True

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        """Generate ``request.n`` completions (see `Backend.generate`).

        When the server ignores ``n`` (it answers fewer choices; remembered in `supports_n`), the rest
        are requested one at a time and concurrently, each holding a slot of its own of `limiter`
        besides the caller's.
        """
        model = request.model or self.model or await self.resolve_model()
        n = request.n
        if n > 1 and self.supports_n is False:
            return await self._fill(request, model, n, on_delta, offset=0)
        completions = await self._request(request, model, n, on_delta)
        if len(completions) < n:
            self.supports_n = False
            completions += await self._fill(request, model, n - len(completions), on_delta, len(completions))
        elif n > 1:
            self.supports_n = True
        return completions[:n]

    async def _fill(
        self, request: GenerationRequest, model: str, count: int, on_delta: DeltaCallback | None, offset: int
    ) -> list[Completion]:
        """``count`` single completions: one in the caller's slot, the others as slots come free.

        The caller's slot works through the list while helpers wait for slots of their own; helpers
        still waiting when the list is done are dropped. So no caller ever waits for a slot while it
        holds one (callers waiting on each other's slots would deadlock), and a free endpoint serves
        them all at once.
        """
        results: list[list[Completion]] = [[] for _ in range(count)]
        todo = collections.deque(range(count))
        waiting: set[anyio.CancelScope] = set()

        async def work() -> None:
            while todo:
                index = todo.popleft()
                results[index] = await self._request(request, model, 1, on_delta, offset + index)

        async def helper() -> None:
            with anyio.CancelScope() as scope:
                waiting.add(scope)
                await self.limiter.acquire()
            waiting.discard(scope)  # no await since the slot came: the scope can no longer be cancelled
            if scope.cancel_called:
                return
            try:
                await work()
            finally:
                self.limiter.release()

        try:
            async with anyio.create_task_group() as group:
                for _ in range(count - 1):
                    group.start_soon(helper)
                await work()
                for scope in waiting:
                    scope.cancel()
        except BaseExceptionGroup as failures:
            first = _first_error(failures)
            if first is None:
                raise
            raise first from None
        return [completion for result in results for completion in result]

    async def _request(
        self,
        request: GenerationRequest,
        model: str,
        n: int,
        on_delta: DeltaCallback | None,
        offset: int = 0,
    ) -> list[Completion]:
        adapted: set[str] = set()
        stream = self.stream or on_delta is not None
        while True:
            body = self._body(request, model, n, stream)
            try:
                return await self._send(body, stream, on_delta, offset)
            except UnsupportedParameterError as error:
                # Each field at most once per request; a request in flight when another one adapted
                # the endpoint resends too (its body was built before).
                if error.param in adapted or not self._adapt(error, body):
                    raise
                adapted.add(error.param)

    async def _send(
        self, body: dict[str, Any], stream: bool, on_delta: DeltaCallback | None, offset: int
    ) -> list[Completion]:
        if stream:
            completions, measured = await self._streamed(body, on_delta, offset)
        else:
            response = await self.transport.post("/chat/completions", body)
            completions = self._parse(response)
            measured = isinstance(response, dict) and isinstance(response.get("usage"), dict)
        if not measured:
            # The server sent no usage (some ignore `stream_options.include_usage`): count, and say so.
            await anyio.to_thread.run_sync(estimate_usage, self.count_tokens, body["messages"], completions)
        return completions

    def _parse(self, response: Any) -> list[Completion]:
        # On the hot path of every request: plain-dict checks, and no second `Usage` per choice.
        if not isinstance(response, dict):
            raise MalformedResponseError(f"{self.base_url} sent a body that is not a JSON object")
        choices = response.get("choices")
        if not isinstance(choices, list) or not choices:
            raise MalformedResponseError(f"{self.base_url} returned no choices")
        if len(choices) > 1:
            choices = sorted(choices, key=lambda c: c.get("index") or 0 if isinstance(c, dict) else 0)
        usage = _usage(response.get("usage")) or Usage()
        model = response.get("model")
        parsed: list[Completion] = []
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(message, dict):
                raise MalformedResponseError(f"{self.base_url} returned a choice without a message")
            content = message.get("content")
            parsed.append(
                Completion(
                    content=content if isinstance(content, str) else None,
                    reasoning=_reasoning_of(message),
                    finish_reason=choice.get("finish_reason"),
                    usage=usage,
                    model=model,
                )
            )
        if len(parsed) > 1:
            shares = usage.split([len(c.content or "") + len(c.reasoning or "") for c in parsed])
            for completion, share in zip(parsed, shares, strict=True):
                completion.usage = share
        return parsed

    async def _streamed(
        self, body: dict[str, Any], on_delta: DeltaCallback | None, offset: int
    ) -> tuple[list[Completion], bool]:
        """The streamed completions, and whether the server sent their usage."""
        contents: dict[int, list[str]] = {}
        reasonings: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        usage: Usage | None = None
        model: str | None = None
        async with contextlib.aclosing(self.transport.stream("/chat/completions", body)) as stream:
            async for chunk in stream:
                if not isinstance(chunk, Mapping):
                    raise MalformedResponseError(
                        f"{self.base_url} streamed a chunk that is not a JSON object"
                    )
                model = chunk.get("model") or model
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}) if isinstance(choice, dict) else None
                    if not isinstance(delta, dict):
                        raise MalformedResponseError(
                            f"{self.base_url} streamed a choice without a delta object"
                        )
                    index = choice.get("index") or 0
                    contents.setdefault(index, [])
                    reasoning = _reasoning_of(delta)
                    if reasoning:
                        reasonings.setdefault(index, []).append(reasoning)
                        if on_delta is not None:
                            await on_delta(offset + index, "reasoning", reasoning)
                    text = delta.get("content")
                    if text:
                        contents[index].append(text)
                        if on_delta is not None:
                            await on_delta(offset + index, "content", text)
                    if choice.get("finish_reason") is not None:
                        finish[index] = choice["finish_reason"]
        if not contents:
            raise MalformedResponseError(f"{self.base_url} streamed no choices")
        parsed = [
            Completion(
                content="".join(contents[i]),
                reasoning="".join(reasonings[i]) if i in reasonings else None,
                finish_reason=finish.get(i),
                model=model,
            )
            for i in sorted(contents)
        ]
        if usage is not None:
            usages = usage.split([len(c.content or "") + len(c.reasoning or "") for c in parsed])
            for completion, part in zip(parsed, usages, strict=True):
                completion.usage = part
        return parsed, usage is not None
