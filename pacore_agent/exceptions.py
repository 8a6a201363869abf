"""Exceptions raised by pacore.

Usage mistakes are raised at construction and say what to change; runtime failures carry structured
fields and, where a solve was under way, the partial result so that no finished work is lost::

    PacoreError
    ├── UsageError (also a ValueError)        bad schedule, empty problem, bad config: fix the call
    │   └── ConfigurationError                 the environment or endpoint settings are incomplete
    └── PacoreRuntimeError                     something failed while running
        ├── BackendError                       one call to a model endpoint failed (status, body, attempt)
        │   ├── RateLimitError                 429; honours Retry-After
        │   ├── ServerError                    5xx
        │   ├── EndpointConnectionError        refused, reset or dropped connection
        │   ├── EndpointTimeoutError           no answer in time
        │   ├── MalformedResponseError         the body is not a valid completion
        │   └── RequestRejectedError           400/401/403/404/422: not retried
        │       ├── AuthenticationError        401/403
        │       ├── ContextLengthError         the request does not fit the model's context
        │       └── UnsupportedParameterError  the model refuses one request field or its value
        ├── SolveError                         a solve stopped; ``.partial`` holds what finished
        │   ├── RoundFailedError               every trajectory of a round failed
        │   └── BudgetExceeded                 a call, token, cost or time budget ran out
        ├── ReplayMissError                    a replay backend was asked for an unrecorded request
        └── GraderUnavailableError             math-verify cannot start (`pacore_agent.evaluation.answers`):
                                               a run stops rather than grade anything False
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacore_agent.results import SolveResult

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BudgetExceeded",
    "ConfigurationError",
    "ContextLengthError",
    "EndpointConnectionError",
    "EndpointTimeoutError",
    "MalformedResponseError",
    "PacoreError",
    "PacoreRuntimeError",
    "RateLimitError",
    "ReplayMissError",
    "RequestRejectedError",
    "RoundFailedError",
    "ServerError",
    "SolveError",
    "UnsupportedParameterError",
    "UsageError",
]


class PacoreError(Exception):
    """Base class of every error pacore raises on purpose."""


class UsageError(PacoreError, ValueError):
    """The caller asked for something invalid; the message says what to change."""


class ConfigurationError(UsageError):
    """The environment or endpoint settings are incomplete or inconsistent."""


class PacoreRuntimeError(PacoreError):
    """A failure while running: endpoint errors, failed rounds, exhausted budgets."""


class BackendError(PacoreRuntimeError):
    """A call to a model endpoint failed.

    Attributes:
        status_code: HTTP status, when the endpoint answered.
        body: A short excerpt of the response body, when there was one.
        attempt: Which attempt (1-based) raised it; set by the retry policy.
        retryable: Whether the retry policy may try again.
    """

    retryable: bool = True

    def __init__(self, message: str, *, status_code: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.attempt = 1

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.append(f"(HTTP {self.status_code})")
        if self.attempt > 1:
            parts.append(f"after {self.attempt} attempts")
        return " ".join(parts)


class RateLimitError(BackendError):
    """The endpoint answered 429.

    Attributes:
        retry_after: Seconds the endpoint asked us to wait, from ``Retry-After`` / ``retry-after-ms``.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 429,
        body: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.retry_after = retry_after


class ServerError(BackendError):
    """The endpoint answered with a 5xx status."""


class EndpointConnectionError(BackendError):
    """The connection was refused, reset or dropped before a full answer arrived."""


class EndpointTimeoutError(BackendError):
    """The endpoint did not answer within the configured timeout."""


class MalformedResponseError(BackendError):
    """The endpoint answered 2xx with a body that is not a valid completion."""


class RequestRejectedError(BackendError):
    """The endpoint rejected the request (400, 401, 403, 404, 422); retrying would not help."""

    retryable = False


class AuthenticationError(RequestRejectedError):
    """The endpoint refused the credentials (401/403). Check the API key variable."""


class ContextLengthError(RequestRejectedError):
    """The prompt plus ``max_tokens`` does not fit the model's context window.

    Attributes:
        max_context: The model's context length, when the endpoint said it.
        prompt_tokens: The prompt's token count, when the endpoint said it.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 400,
        body: str | None = None,
        max_context: int | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.max_context = max_context
        self.prompt_tokens = prompt_tokens

    @classmethod
    def from_message(
        cls, message: str, *, status_code: int = 400, body: str | None = None
    ) -> ContextLengthError:
        """Build from a server's message, reading the numbers vLLM, SGLang and OpenAI put in it."""
        lowered = message.lower()
        return cls(
            message,
            status_code=status_code,
            body=body,
            max_context=_first_int(_CONTEXT_PATTERNS, lowered),
            prompt_tokens=_first_int(_PROMPT_PATTERNS, lowered),
        )

    @staticmethod
    def matches(message: str) -> bool:
        """Whether a rejection message is about the context length."""
        lowered = message.lower()
        return any(hint in lowered for hint in _CONTEXT_HINTS)


class UnsupportedParameterError(RequestRejectedError):
    """The endpoint refuses one request field, or its value.

    OpenAI's hosted reasoning models refuse ``top_p``, ``max_tokens`` and a temperature other than 1.

    Attributes:
        param: The refused field, as the endpoint named it (``"top_p"``).
        code: ``"unsupported_parameter"`` (drop the field) or ``"unsupported_value"`` (leave the
            server's default).
    """

    def __init__(
        self, message: str, *, param: str, code: str, status_code: int | None = 400, body: str | None = None
    ) -> None:
        super().__init__(message, status_code=status_code, body=body)
        self.param = param
        self.code = code


_CONTEXT_PATTERNS = (
    re.compile(r"maximum context length (?:is|of) (\d+)"),
    re.compile(r"context length \((\d+) tokens\)"),
    re.compile(r"context length (?:is|of) (\d+)"),
)
_PROMPT_PATTERNS = (
    re.compile(r"\((\d+) in the messages"),
    re.compile(r"(\d+) input tokens"),
    re.compile(r"(\d+) tokens from the input"),
    re.compile(r"input \((\d+) tokens\)"),
    re.compile(r"prompt (?:has|contains|is) (\d+) tokens"),
    re.compile(r"messages resulted in (\d+) tokens"),
)
_CONTEXT_HINTS = ("context length", "context window", "maximum context", "too many tokens", "max_model_len")


def _first_int(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None


class SolveError(PacoreRuntimeError):
    """A solve stopped before its final answer.

    Attributes:
        partial: The result so far: every finished round and trajectory, with its usage.
    """

    def __init__(self, message: str, *, partial: SolveResult) -> None:
        super().__init__(message)
        self.partial = partial


class RoundFailedError(SolveError):
    """Every trajectory of a round failed, so the next round has no messages to synthesize."""


class BudgetExceeded(SolveError):
    """A budget (calls, tokens, cost or wall time) would be exceeded.

    Attributes:
        budget: Which limit ran out: ``"calls"``, ``"tokens"``, ``"cost"`` or ``"wall_time"``.
    """

    def __init__(self, message: str, *, partial: SolveResult, budget: str) -> None:
        super().__init__(message, partial=partial)
        self.budget = budget


class ReplayMissError(PacoreRuntimeError):
    """A replay backend was asked for a request that was never recorded."""
