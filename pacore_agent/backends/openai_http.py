"""`ChatTransport`: the HTTP side of `OpenAIBackend`, on one pooled aiohttp session.

Every OpenAI-compatible endpoint, local or hosted, goes through this one path: a bearer token, JSON
bodies, ``data:`` server-sent events for streams, and every failure read by
`pacore_agent.backends.errors` (the same translation the SGLang client and the server use).

Why not the ``openai`` SDK: it cost the client about 0.7 ms of CPU per request against 0.2 ms here
(cProfile, 3,000 requests to the simulated endpoint; see ``benchmarks/README.md``). Most of it was
building the request, not sending it: the SDK's per-request option model (pydantic), httpx's URL
parsing and header merging, then httpx's layer over the same aiohttp connection pool. Here the URL and
headers are built once per backend and a request is ``json.dumps`` plus one ``session.post``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
import yarl

from pacore_agent.backends.errors import error_from_response, excerpt, mask_userinfo, stream_error
from pacore_agent.exceptions import (
    EndpointConnectionError,
    EndpointTimeoutError,
    MalformedResponseError,
)

__all__ = ["CONNECT_TIMEOUT", "ChatTransport"]

CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection."""

_LOST = (aiohttp.ClientError, OSError)
"""A refused, dropped or garbled exchange (a bad status line from a proxy included); `TimeoutError`, also
an `OSError`, is caught before it."""

_READ_BUFFER = 1 << 20
"""aiohttp's read buffer; a streamed line may be 8 times as long (8 MiB; the default allows 512 KiB, less
than one event of a long answer sent whole, with logprobs)."""


class ChatTransport:
    """JSON over HTTP to one OpenAI-compatible base URL, with pooled connections.

    Args:
        base_url: The endpoint's base URL, e.g. ``http://127.0.0.1:30000/v1`` (no trailing slash).
        api_key: Sent as ``Authorization: Bearer`` (``EMPTY`` when ``None``: local servers accept any
            key); masked wherever an answer repeats it. A user and password in ``base_url`` are sent
            as basic auth instead.
        timeout: Seconds a request may take; for streams, seconds between two reads.
        max_connections: Connections open at once at most.
        extra_headers: Headers sent with every request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        max_connections: int,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        url = yarl.URL(base_url)
        # Credentials in the URL go as basic auth; base_url, which messages quote, shows them as ***.
        self.base_url = mask_userinfo(base_url)
        self._url = str(url.with_user(None)) if url.user else base_url
        self.timeout = timeout
        self.max_connections = max_connections
        self._secrets: tuple[str | None, ...] = (api_key,)
        if url.user:
            credentials = base64.b64encode(f"{url.user}:{url.password or ''}".encode()).decode()
            authorization = f"Basic {credentials}"
            self._secrets = (api_key, url.password, credentials)
        else:
            authorization = f"Bearer {api_key or 'EMPTY'}"
        self._headers = {
            "Authorization": authorization,
            "Content-Type": "application/json",
            "Accept": "application/json",
            **(extra_headers or {}),
        }
        self._session: aiohttp.ClientSession | None = None
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=timeout
        )

    def __repr__(self) -> str:
        return f"ChatTransport(base_url={self.base_url!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session, opened on first use (it needs the running event loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=CONNECT_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=self.max_connections, ttl_dns_cache=300),
                # Nothing in the answers is read as a cookie; an unsafe jar would only cost time.
                cookie_jar=aiohttp.DummyCookieJar(),
                read_bufsize=_READ_BUFFER,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the pooled connections; the transport reopens them if used again."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def get(self, path: str) -> Any:
        """``GET path``: the parsed JSON answer."""
        return await self._call("GET", path, None)

    async def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """``POST path`` with a JSON ``body``: the parsed JSON answer."""
        return await self._call("POST", path, json.dumps(body).encode())

    async def _call(self, method: str, path: str, data: bytes | None) -> Any:
        try:
            async with self.session.request(method, self._url + path, data=data) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise self._error(response.status, raw, response.headers)
        except TimeoutError as exc:
            raise EndpointTimeoutError(f"{self.base_url} did not answer in time") from exc
        except _LOST as exc:
            raise self._lost(exc) from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise MalformedResponseError(
                f"{self.base_url} sent a malformed response: the body is not JSON",
                status_code=response.status,
                body=excerpt(raw),
            ) from exc

    async def stream(self, path: str, body: Mapping[str, Any]) -> AsyncGenerator[Any, None]:
        """``POST path`` and yield each server-sent ``data:`` event, parsed, until ``[DONE]``.

        Raises:
            BackendError: An error answer, or an ``{"error": ...}`` event in the stream (`stream_error`).
        """
        data = json.dumps(body).encode()
        try:
            async with self.session.post(
                self._url + path, data=data, timeout=self._stream_timeout
            ) as response:
                if response.status >= 400:
                    raise self._error(response.status, await response.read(), response.headers)
                async for line in response.content:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments (": ping"), `event:` lines
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return
                    try:
                        event = json.loads(payload)
                    except ValueError as exc:
                        raise MalformedResponseError(
                            f"{self.base_url} sent a malformed response: a streamed event is not JSON",
                            body=excerpt(payload),
                        ) from exc
                    if isinstance(event, dict) and event.get("error") is not None:
                        raise stream_error(self.base_url, event, secrets=self._secrets)
                    yield event
        except TimeoutError as exc:
            raise EndpointTimeoutError(f"{self.base_url} did not answer in time") from exc
        except _LOST as exc:
            raise self._lost(exc) from exc
        except aiohttp.http_exceptions.HttpProcessingError as exc:  # a line past the read buffer's limit
            raise MalformedResponseError(
                f"{self.base_url} sent a malformed response: {exc.message.splitlines()[0]}"
            ) from exc

    def _error(self, status: int, raw: bytes, headers: Mapping[str, str]) -> Exception:
        return error_from_response(self.base_url, status, raw, headers, secrets=self._secrets)

    def _lost(self, exc: BaseException) -> EndpointConnectionError:
        return EndpointConnectionError(f"could not talk to {self.base_url}: {type(exc).__name__}: {exc}")
