"""Fault injection of the simulated model: what can go wrong, and how each server says it on the wire.

`Faults` scripts or samples failures (`FAULT_KINDS`); the helpers here build them in the wording and body
shape of OpenAI, vLLM or SGLang (`ERROR_STYLES`), for both front ends of the simulator: the HTTP server
(`pacore_agent.backends.sim_server`) sends them, the in-process `SimBackend` raises what a client would
make of them (`fault_error`, through `pacore_agent.backends.errors`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pacore_agent.backends.errors import error_from_response
from pacore_agent.exceptions import EndpointConnectionError, MalformedResponseError, UsageError

if TYPE_CHECKING:
    from pacore_agent.backends.sim import SimConfig

__all__ = [
    "CUT_MID_ANSWER",
    "ERROR_STYLES",
    "FAULT_KINDS",
    "Faults",
    "SimFault",
    "context_fault",
    "draw_fault",
    "error_json",
    "fault_error",
    "refusal",
    "stream_error_json",
]

FAULT_KINDS: tuple[str, ...] = (
    "bad_request",  # 400 invalid request
    "rate_limit",  # 429, Retry-After in seconds
    "rate_limit_date",  # 429, Retry-After as an HTTP-date
    "rate_limit_malformed",  # 429, Retry-After: soon
    "server_error",  # 500
    "unavailable",  # 503
    "drop",  # connection reset before any answer
    "stall",  # no answer until the client gives up
    "malformed",  # 200 whose body is not JSON
    "empty_choices",  # 200 with "choices": []
    "stream_drop",  # the answer cut mid-way (connection closed after some chunks)
    "stream_error",  # an SSE {"error": ...} chunk (500) after some chunks; a plain 500 when not streaming
    "stream_context_length",  # the same with a context-length 400 inside; a plain 400 when not streaming
    "context_length",  # 400 context length
)

ERROR_STYLES: tuple[str, ...] = ("openai", "vllm", "sglang")
"""Wire shapes of error bodies: OpenAI's ``{"error": {..., "code": "str"}}``, vLLM's
``{"error": {..., "code": 400}}``, SGLang's top-level ``{"object": "error", ..., "code": 400}``."""

CUT_MID_ANSWER = ("stream_drop", "stream_error", "stream_context_length")
_RATE_LIMIT_MESSAGE = (
    "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1. "
    "Please try again in 1s. (simulated)"
)


@dataclass(frozen=True)
class Faults:
    """Fault injection.

    Attributes:
        rates: Probability per request of each fault kind (see `FAULT_KINDS`).
        script: Faults of the first requests, in arrival order (``None`` = no fault): deterministic
            scenarios for tests, e.g. ``("rate_limit", "server_error")``.
        retry_after: Seconds a 429 asks to wait (``rate_limit``: as seconds; ``rate_limit_date``: as an
            HTTP-date that far ahead).
        stream_cut: Share of the answer's chunks sent before ``stream_drop`` / ``stream_error`` strikes.
    """

    rates: Mapping[str, float] = field(default_factory=dict)
    script: Sequence[str | None] = ()
    retry_after: float = 1.0
    stream_cut: float = 0.5

    def __post_init__(self) -> None:
        for kind in [*self.rates, *(k for k in self.script if k is not None)]:
            if kind not in FAULT_KINDS:
                raise UsageError(f"unknown fault {kind!r}: choose from {', '.join(FAULT_KINDS)}")
        if not 0 <= self.stream_cut <= 1:
            raise UsageError(f"stream_cut must be within [0, 1], got {self.stream_cut}")


@dataclass(frozen=True)
class SimFault:
    """A simulated failure.

    Attributes:
        kind: One of `FAULT_KINDS`, or ``"unsupported_parameter"`` / ``"unsupported_value"`` /
            ``"model_not_found"`` (hosted mode).
        status: HTTP status (0 when there is no answer at all).
        message: The error message, in the real servers' wording.
        retry_after: Seconds a 429 asks to wait (``None``: no usable ``Retry-After``).
        param: The offending request field, as OpenAI names it in ``error.param``.
        code: OpenAI's ``error.code`` (``"unsupported_parameter"``, ``"context_length_exceeded"``, ...).
    """

    kind: str
    status: int
    message: str
    retry_after: float | None = None
    param: str | None = None
    code: str | None = None


def refusal(config: SimConfig, body: Mapping[str, Any]) -> SimFault | None:
    """OpenAI's answer to fields a model refuses (one field at a time, as it does)."""
    model = body.get("model")
    if config.hosted_reasoning and model != config.model:
        return SimFault(
            "model_not_found",
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    refused = (*config.unsupported_params, *(("top_p", "max_tokens") if config.hosted_reasoning else ()))
    for name in refused:
        if name in body:
            hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
            return SimFault(
                "unsupported_parameter",
                400,
                f"Unsupported parameter: '{name}' is not supported with this model.{hint}",
                param=name,
                code="unsupported_parameter",
            )
    if not config.hosted_reasoning:
        return None
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return SimFault(
            "unsupported_value",
            400,
            f"Unsupported value: 'temperature' does not support {temperature} with this model. "
            "Only the default (1) value is supported.",
            param="temperature",
            code="unsupported_value",
        )
    return None


def context_fault(config: SimConfig, prompt_tokens: int, max_tokens: int) -> SimFault:
    """A context-length 400 in the wording of the server `SimConfig.wire_style` names."""
    # Each server's own wording, so clients parse it as they would parse the real one's.
    window = config.context_window
    style = config.wire_style
    if style == "openai":
        message = (
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            "completion). Please reduce the length of the messages or completion."
        )
        return SimFault("context_length", 400, message, param="messages", code="context_length_exceeded")
    if style == "vllm":
        if prompt_tokens >= window:
            message = (
                f"This model's maximum context length is {window} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages."
            )
        else:
            message = (
                f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
                f"maximum context length is {window} tokens and your request has {prompt_tokens} input "
                f"tokens ({max_tokens} > {window} - {prompt_tokens})."
            )
        return SimFault("context_length", 400, message)
    return SimFault(
        "context_length",
        400,
        f"Requested token count exceeds the model's maximum context length of {window} tokens. "
        f"You requested a total of {prompt_tokens + max_tokens} tokens: {prompt_tokens} tokens from "
        f"the input messages and {max_tokens} tokens for the completion. Please reduce the number of "
        "tokens in the input messages or the completion to fit within the limit.",
    )


def draw_fault(faults: Faults, arrival: int, rng: random.Random) -> SimFault | None:
    """The fault of request number ``arrival``: scripted, else drawn from the rates."""
    kind: str | None = None
    if arrival < len(faults.script):
        kind = faults.script[arrival]
    elif faults.rates:
        draw = rng.random()
        for name, rate in faults.rates.items():
            if draw < rate:
                kind = name
                break
            draw -= rate
    if kind is None:
        return None
    status, message = {
        "bad_request": (400, "Invalid request (simulated)"),
        "rate_limit": (429, _RATE_LIMIT_MESSAGE),
        "rate_limit_date": (429, _RATE_LIMIT_MESSAGE),
        "rate_limit_malformed": (429, _RATE_LIMIT_MESSAGE),
        "server_error": (500, "Internal server error (simulated)"),
        "unavailable": (503, "Service unavailable (simulated)"),
        "drop": (0, "connection reset (simulated)"),
        "stall": (0, "stalled (simulated)"),
        "malformed": (200, "malformed body (simulated)"),
        "empty_choices": (200, "no choices (simulated)"),
        "stream_drop": (0, "connection closed mid-answer (simulated)"),
        "stream_error": (500, ""),
        "stream_context_length": (400, ""),
        "context_length": (400, ""),
    }[kind]
    retry_after = faults.retry_after if kind in ("rate_limit", "rate_limit_date") else None
    code = "rate_limit_exceeded" if status == 429 else None
    return SimFault(kind, status, message, retry_after, code=code)


_SERVER_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_json(
    style: str, status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An error body as the server of ``style`` sends it (`pacore_agent.backends.sim.ERROR_STYLES`).

    OpenAI puts a string ``code`` (or null) and a snake-case ``type`` under ``error``; vLLM the same
    envelope with the HTTP status as ``code``; SGLang (and vLLM before 0.10) the fields at top level.
    """
    if style == "openai":
        kind = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}
    fields = {
        "message": message,
        "type": _SERVER_TYPES.get(status, "BadRequestError"),
        "param": param,
        "code": status,
    }
    if style == "sglang":
        return {"object": "error", **fields}
    return {"error": fields}


def stream_error_json(style: str, status: int, message: str) -> dict[str, Any]:
    """The ``data:`` payload of an SSE error chunk: always under ``error`` (SGLang keeps ``object``)."""
    body = error_json(style, status, message)
    return {"error": body} if style == "sglang" else body


def fault_error(fault: SimFault, endpoint: str, style: str = "vllm") -> Exception:
    """The exception a client sees for a simulated fault (the in-process twin of the HTTP path)."""
    if fault.kind in ("drop", "stream_drop"):
        return EndpointConnectionError(f"{endpoint}: {fault.message}")
    if fault.kind in ("malformed", "empty_choices"):
        return MalformedResponseError(f"{endpoint} sent a malformed response: {fault.message}")
    headers = {"Retry-After": "soon" if fault.retry_after is None else f"{fault.retry_after:g}"}
    body = error_json(style, fault.status, fault.message, param=fault.param, code=fault.code)
    return error_from_response(endpoint, fault.status, body, headers)
