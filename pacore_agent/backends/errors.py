"""The one translation between HTTP error answers and pacore's exceptions, both ways.

Every backend reads endpoint failures through `error_from_response` (an HTTP status and body) or
`stream_error` (an SSE ``data: {"error": ...}`` chunk); the PaCoRe server writes its own error answers with `error_response`. So a status, a
``Retry-After`` header or a context-length message means the same thing wherever it arrives:

- 429: `RateLimitError`, with ``Retry-After`` read as seconds or as an HTTP-date (OpenAI's
  ``retry-after-ms`` first); any other value is ignored, never raised.
- 408, 409 and 5xx: `ServerError` (retried; the ``openai`` SDK retries the same statuses).
- 401/403: `AuthenticationError`.
- 400/413/422 about the context length (OpenAI's ``context_length_exceeded`` code, or the wording of
  OpenAI, vLLM or SGLang): `ContextLengthError`, with the numbers the message gives.
- 400 naming an unsupported parameter or value (OpenAI's ``unsupported_parameter`` /
  ``unsupported_value``, or the message): `UnsupportedParameterError`, naming the field.
- any other 4xx: `RequestRejectedError` (not retried).

Error bodies come in the shapes of OpenAI (``{"error": {"message", "type", "param", "code": "str"}}``),
vLLM (the same with ``code`` the status), SGLang (those fields at top level, ``{"error": "Unauthorized"}``,
``{"success": false, "message": ...}``), FastAPI (``{"detail": ...}``) and plain text.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pacore_agent.exceptions import (
    AuthenticationError,
    BackendError,
    BudgetExceeded,
    ContextLengthError,
    EndpointTimeoutError,
    PacoreError,
    RateLimitError,
    RequestRejectedError,
    RoundFailedError,
    ServerError,
    SolveError,
    UnsupportedParameterError,
    UsageError,
)

__all__ = [
    "BODY_EXCERPT_CHARS",
    "INTERNAL_ERROR",
    "ErrorFields",
    "error_fields",
    "error_from_response",
    "error_response",
    "excerpt",
    "parse_retry_after",
    "redact",
    "stream_error",
    "unsupported_parameter",
]

BODY_EXCERPT_CHARS = 2000
"""How much of an error body an exception keeps (``BackendError.body``)."""

KEY_HINT = "check the API key (api_key=..., PACORE_API_KEY or OPENAI_API_KEY)"

_RETRIED_4XX = (408, 409)
_CONTEXT_STATUSES = (400, 413, 422)
_UNSUPPORTED_CODES = ("unsupported_parameter", "unsupported_value")
_UNSUPPORTED_PATTERNS = (
    re.compile(r"Unsupported (?:parameter|value): '(?P<param>[\w.]+)'"),  # OpenAI
    re.compile(r"Unrecognized request arguments? supplied: (?P<param>[\w.]+)"),  # Azure OpenAI
    re.compile(r"'(?P<param>[\w.]+)' is not supported with this model"),
)
# Status of an SSE error chunk whose `code` is not a status (OpenAI's are strings or null).
_STREAM_STATUS_BY_NAME = {
    "context_length_exceeded": 400,
    "unsupported_parameter": 400,
    "unsupported_value": 400,
    "invalid_request_error": 400,
    "BadRequestError": 400,
    "rate_limit_exceeded": 429,
    "RateLimitError": 429,
    "requests": 429,
    "tokens": 429,
    "server_error": 500,
    "InternalServerError": 500,
}


@dataclass(frozen=True)
class ErrorFields:
    """What an error body says, whatever its shape.

    Attributes:
        message: The human-readable message ("" when the body has none).
        type: ``error.type`` (``"invalid_request_error"``, ``"BadRequestError"``, ...).
        param: ``error.param``: the request field at fault, when named.
        code: ``error.code``: OpenAI's string code, or the status vLLM and SGLang put there.
    """

    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


def excerpt(body: Any) -> str | None:
    """At most `BODY_EXCERPT_CHARS` of a body, as text (``None`` for no body)."""
    if body is None:
        return None
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text[:BODY_EXCERPT_CHARS]


def _loads(body: Any) -> Any:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            return json.loads(body)
        except ValueError:
            return body.strip()
    return body


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def error_fields(body: Any) -> ErrorFields:
    """Read message, type, param and code from an error body of any known shape (text, bytes or JSON)."""
    data = _loads(body)
    if isinstance(data, str):
        return ErrorFields(message=data[:BODY_EXCERPT_CHARS])
    if not isinstance(data, Mapping):
        return ErrorFields(message=excerpt(data) or "")
    error = data.get("error")
    if isinstance(error, str):  # SGLang without a key: {"error": "Unauthorized"}
        return ErrorFields(message=error)
    source = error if isinstance(error, Mapping) else data
    message = source.get("message")
    if message is None:
        message = data.get("detail")  # FastAPI's own errors
    code = source.get("code")
    return ErrorFields(
        message=""
        if message is None
        else str(message)
        if not isinstance(message, list)
        else json.dumps(message),
        type=_optional_str(source.get("type")),
        param=_optional_str(source.get("param")),
        code=code if isinstance(code, str | int) and not isinstance(code, bool) else None,
    )


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: Callable[[], float] = time.time
) -> float | None:
    """Seconds a 429 or 503 asks the client to wait, or ``None`` when it gives no usable value.

    Reads ``retry-after-ms`` (OpenAI) and then ``Retry-After`` as seconds or as an HTTP-date (RFC 9110).
    Anything else (``"soon"``, a negative or non-finite number) is ignored: a bad header must never
    fail the call it came with.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    milliseconds = _seconds(lowered.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    value = lowered.get("retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110 dates are always GMT; anything else is not one
        return None
    return max(0.0, when.timestamp() - now())


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


_USERINFO = re.compile(r"://[^/@\s]+@")


def mask_userinfo(text: str) -> str:
    """``text`` with the user and password of every URL in it shown as ``***`` (``https://***@host``)."""
    return _USERINFO.sub("://***@", text)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each secret (keys) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def unsupported_parameter(fields: ErrorFields) -> str | None:
    """The request field a 400 refuses as unsupported (parameter or value), or ``None``."""
    if fields.code in _UNSUPPORTED_CODES and fields.param:
        return fields.param
    for pattern in _UNSUPPORTED_PATTERNS:
        match = pattern.search(fields.message)
        if match:
            return match.group("param")
    return None


def error_from_response(
    what: str,
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    now: Callable[[], float] = time.time,
    secrets: Iterable[str | None] = (),
) -> BackendError:
    """The exception for an HTTP error answer.

    Args:
        what: Who answered, for the message (an endpoint URL or ``"POST /generate"``).
        status: The HTTP status.
        body: The body: text, bytes or already-parsed JSON.
        headers: The response headers (``Retry-After``).
        now: Wall clock, to read an HTTP-date ``Retry-After``.
        secrets: Keys masked wherever the body repeats them (some proxies echo the request's headers).
    """
    fields = error_fields(body)
    secrets = tuple(secrets)
    raw = excerpt(body)
    raw = raw and redact(raw, secrets)
    message = redact(fields.message, secrets)
    text = (
        f"{what} answered {status}: {message}"
        if message
        else f"{what} failed with HTTP {status} and no message"
    )
    if status == 429:
        return RateLimitError(
            text, status_code=status, body=raw, retry_after=parse_retry_after(headers, now=now)
        )
    if status in (401, 403):
        return AuthenticationError(f"{text}; {KEY_HINT}", status_code=status, body=raw)
    if status >= 500 or status in _RETRIED_4XX:
        return ServerError(text, status_code=status, body=raw)
    if status in _CONTEXT_STATUSES and (
        fields.code == "context_length_exceeded" or ContextLengthError.matches(message)
    ):
        return ContextLengthError.from_message(text, status_code=status, body=raw)
    if status == 400 and (param := unsupported_parameter(fields)) is not None:
        code = fields.code if fields.code in _UNSUPPORTED_CODES else "unsupported_parameter"
        return UnsupportedParameterError(text, param=param, code=str(code), status_code=status, body=raw)
    if 400 <= status < 500:
        return RequestRejectedError(text, status_code=status, body=raw)
    return BackendError(text, status_code=status, body=raw)


def stream_error(what: str, payload: Any, *, secrets: Iterable[str | None] = ()) -> BackendError:
    """The exception for an SSE error chunk (``data: {"error": {...}}``) in the middle of a stream.

    vLLM and SGLang put the status in ``code``; OpenAI puts a string code or a type. The chunk is typed
    as the same error answered before the stream would be, so a context-length error mid-stream is a
    `ContextLengthError` (not retried as it stands), and an internal error a retryable `ServerError`.
    """
    error = payload.get("error", payload) if isinstance(payload, Mapping) else payload
    fields = error_fields({"error": error} if isinstance(error, Mapping) else error)
    status: int | None = None
    if isinstance(fields.code, int) and 400 <= fields.code <= 599:
        status = fields.code
    else:
        for name in (fields.code, fields.type):
            if isinstance(name, str) and name in _STREAM_STATUS_BY_NAME:
                status = _STREAM_STATUS_BY_NAME[name]
                break
    if status is None:
        status = 400 if ContextLengthError.matches(fields.message) else 500
    error_body = {"error": dict(error)} if isinstance(error, Mapping) else error
    return error_from_response(f"{what} (in the stream)", status, error_body, secrets=secrets)


INTERNAL_ERROR = "internal error of the PaCoRe server (details are in its log)"
"""What a server answers for an unexpected exception (its text stays in the log)."""


def error_response(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI-style body a server answers for ``exc`` (the reverse translation).

    A bad request is the client's (400, or 429 when the upstream limits the rate, with its type and
    code); a failure of the endpoint behind the server is a 502 (504 for a timeout); anything that is
    not a pacore error is a 500 whose message never carries the exception's text.
    """

    def body(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    if not isinstance(exc, PacoreError):
        return 500, body(INTERNAL_ERROR, "server_error")
    message = str(exc)
    if isinstance(exc, UsageError):
        return 400, body(message, "invalid_request_error")
    if isinstance(exc, ContextLengthError):
        return 400, body(message, "invalid_request_error", param="messages", code="context_length_exceeded")
    if isinstance(exc, UnsupportedParameterError):
        return 400, body(message, "invalid_request_error", param=exc.param, code=exc.code)
    if isinstance(exc, RateLimitError):
        return 429, body(message, "requests", code="rate_limit_exceeded")
    if isinstance(exc, EndpointTimeoutError):
        return 504, body(message, "upstream_error", code="upstream_timeout")
    if isinstance(exc, RoundFailedError):
        return 502, body(message, "upstream_error", code="round_failed")
    if isinstance(exc, BudgetExceeded):
        return 502, body(message, "upstream_error", code="budget_exceeded")
    if isinstance(exc, BackendError | SolveError):
        return 502, body(message, "upstream_error", code="upstream_error")
    return 500, body(INTERNAL_ERROR, "server_error")
