"""Every fault kind at the backend level, over real HTTP, plus the one error translation both ways.

The simulated server sends the real bodies, headers and SSE shapes of OpenAI, vLLM and SGLang
(`tests/test_sim_faults.py` pins them); here `OpenAIBackend` must turn each into the right exception, and
the retry policy must retry it or not, honouring ``Retry-After`` through an injected sleep.
"""

from __future__ import annotations

import email.utils
import json
from typing import Any

import pytest
from aiohttp import web

from pacore_agent import BackendError, BudgetExceeded, RoundFailedError, UsageError
from pacore_agent.backends.base import GenerationRequest, SamplingParams
from pacore_agent.backends.errors import (
    error_fields,
    error_from_response,
    error_response,
    parse_retry_after,
    stream_error,
)
from pacore_agent.backends.openai_compat import OpenAIBackend
from pacore_agent.backends.sim import Faults, SimConfig
from pacore_agent.backends.sim_server import SimServer
from pacore_agent.exceptions import (
    AuthenticationError,
    ContextLengthError,
    EndpointConnectionError,
    EndpointTimeoutError,
    MalformedResponseError,
    RateLimitError,
    RequestRejectedError,
    ServerError,
    UnsupportedParameterError,
)
from pacore_agent.results import SolveResult
from pacore_agent.retry import RetryPolicy, call_with_retries
from pacore_agent.serving.app import AppServer
from tests.helpers import FakeSleep

NOW = 1_700_000_000.0
REQUEST = GenerationRequest(
    messages=[{"role": "user", "content": "What is 6 * 7?"}], sampling=SamplingParams()
)


# -- Retry-After ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"Retry-After": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),  # a date past: at once
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # OpenAI's finer header first
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "Wed, 99 Foo 2026 25:61:61"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_is_seconds_or_a_date_and_anything_else_is_ignored(
    headers: dict[str, str] | None, expected: float | None
) -> None:
    assert parse_retry_after(headers, now=lambda: NOW) == expected


# -- status and body to exception ------------------------------------------------------------------


OPENAI_CONTEXT = (
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
    "(8000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion."
)
VLLM_MAX_TOKENS = (
    "'max_tokens' or 'max_completion_tokens' is too large: 4000. This model's maximum context length is "
    "8192 tokens and your request has 6000 input tokens (4000 > 8192 - 6000)."
)
VLLM_INPUT = (
    "This model's maximum context length is 8192 tokens. However, your request has 9000 input tokens. "
    "Please reduce the length of the input messages."
)
SGLANG_CONTEXT = (
    "Requested token count exceeds the model's maximum context length of 8192 tokens. You requested a total "
    "of 9000 tokens: 7000 tokens from the input messages and 2000 tokens for the completion. Please reduce "
    "the number of tokens in the input messages or the completion to fit within the limit."
)
SGLANG_INPUT = "The input (9000 tokens) is longer than the model's context length (8192 tokens)."


@pytest.mark.parametrize(
    ("body", "prompt_tokens"),
    [
        ({"error": {"message": OPENAI_CONTEXT, "type": "invalid_request_error", "param": "messages",
                    "code": "context_length_exceeded"}}, 8000),
        ({"error": {"message": VLLM_MAX_TOKENS, "type": "BadRequestError", "param": None, "code": 400}}, 6000),
        ({"object": "error", "message": VLLM_INPUT, "type": "BadRequestError", "param": None, "code": 400}, 9000),
        ({"object": "error", "message": SGLANG_CONTEXT, "type": "BadRequestError", "param": None, "code": 400}, 7000),
        ({"error": {"message": SGLANG_INPUT}}, 9000),
    ],
)  # fmt: skip
@pytest.mark.parametrize("status", [400, 413, 422])
def test_context_length_in_the_words_of_openai_vllm_and_sglang(
    body: dict[str, Any], prompt_tokens: int, status: int
) -> None:
    error = error_from_response("http://upstream/v1", status, json.dumps(body))
    assert type(error) is ContextLengthError
    assert (error.max_context, error.prompt_tokens) == (8192, prompt_tokens)
    assert not error.retryable and error.status_code == status


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, RequestRejectedError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, RequestRejectedError),
        (408, ServerError),
        (409, ServerError),
        (422, RequestRejectedError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
    ],
)
def test_status_to_exception(status: int, expected: type[BackendError]) -> None:
    body = {"error": {"message": "something", "type": "x", "param": None, "code": None}}
    error = error_from_response("http://upstream/v1", status, body, {"Retry-After": "soon"})
    assert type(error) is expected
    assert error.retryable is (expected in (ServerError, RateLimitError))
    if isinstance(error, RateLimitError):
        assert error.retry_after is None  # a malformed header is ignored, not raised


@pytest.mark.parametrize(
    ("message", "param", "code"),
    [
        ("Unsupported parameter: 'top_p' is not supported with this model.", "top_p", "unsupported_parameter"),
        ("Unsupported value: 'temperature' does not support 0.7 with this model. Only the default (1) value is supported.",
         "temperature", "unsupported_value"),
    ],
)  # fmt: skip
def test_unsupported_parameter_by_code_and_by_message(message: str, param: str, code: str) -> None:
    by_code = error_from_response(
        "u",
        400,
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}},
    )
    by_message = error_from_response("u", 400, {"detail": message})
    for error in (by_code, by_message):
        assert isinstance(error, UnsupportedParameterError)
        assert error.param == param
    assert by_code.code == code  # type: ignore[attr-defined]
    azure = error_from_response(
        "u", 400, {"error": {"message": "Unrecognized request argument supplied: top_p"}}
    )
    assert isinstance(azure, UnsupportedParameterError) and azure.param == "top_p"


def test_error_fields_of_every_shape() -> None:
    assert error_fields('{"error": "Unauthorized"}').message == "Unauthorized"
    assert error_fields(b'{"success": false, "message": "Failed to load"}').message == "Failed to load"
    assert error_fields({"detail": "Not Found"}).message == "Not Found"
    assert error_fields("<html>502 Bad Gateway</html>").message == "<html>502 Bad Gateway</html>"
    vllm = error_fields({"error": {"message": "m", "type": "BadRequestError", "param": "n", "code": 400}})
    assert (vllm.type, vllm.param, vllm.code) == ("BadRequestError", "n", 400)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"error": {"message": VLLM_MAX_TOKENS, "type": "BadRequestError", "param": None, "code": 400}},
         ContextLengthError),
        ({"error": {"object": "error", "message": SGLANG_CONTEXT, "type": "BadRequestError", "param": None,
                    "code": 400}}, ContextLengthError),
        ({"error": {"message": "Internal server error", "type": "InternalServerError", "param": None, "code": 500}},
         ServerError),
        ({"message": "The server had an error", "type": "server_error", "param": None, "code": None}, ServerError),
        ({"message": OPENAI_CONTEXT, "type": "invalid_request_error", "code": "context_length_exceeded"},
         ContextLengthError),
        ({"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}, RateLimitError),
        ({"message": "An error occurred during streaming"}, ServerError),
    ],
)  # fmt: skip
def test_sse_error_chunks_are_typed_by_their_status_or_code(
    payload: Any, expected: type[BackendError]
) -> None:
    error = stream_error("http://upstream/v1", payload)
    assert type(error) is expected
    assert "in the stream" in str(error)


def test_error_response_is_the_reverse_translation() -> None:
    partial = SolveResult.__new__(SolveResult)
    cases: list[tuple[BaseException, int, str | None]] = [
        (UsageError("n must be at least 1"), 400, None),
        (ContextLengthError.from_message("too long"), 400, "context_length_exceeded"),
        (
            UnsupportedParameterError("no", param="top_p", code="unsupported_parameter"),
            400,
            "unsupported_parameter",
        ),
        (RateLimitError("slow"), 429, "rate_limit_exceeded"),
        (EndpointTimeoutError("late"), 504, "upstream_timeout"),
        (ServerError("boom", status_code=500), 502, "upstream_error"),
        (RoundFailedError("all failed", partial=partial), 502, "round_failed"),
        (BudgetExceeded("spent", partial=partial, budget="calls"), 502, "budget_exceeded"),
        (KeyError("secret-detail"), 500, None),
    ]
    for exc, status, code in cases:
        got_status, body = error_response(exc)
        assert (got_status, body["error"]["code"]) == (status, code), exc
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "secret-detail" not in json.dumps(error_response(KeyError("secret-detail"))[1])
    assert (
        error_response(UnsupportedParameterError("no", param="top_p", code="x"))[1]["error"]["param"]
        == "top_p"
    )


# -- every fault kind over HTTP, at the backend ---------------------------------------------------------


async def _attempt(kind: str, *, stream: bool, style: str = "vllm", **backend: Any) -> BaseException | None:
    config = SimConfig(
        seed=1, error_style=style, context_window=4096, faults=Faults(script=[kind], retry_after=7)
    )
    async with SimServer(config) as server:
        async with OpenAIBackend(server.base_url, "pacore-sim", stream=stream, **backend) as client:
            try:
                await client.generate(REQUEST)
            except BaseException as error:
                return error
    return None


FAULTS: list[tuple[str, type[BackendError]]] = [
    ("rate_limit", RateLimitError),
    ("rate_limit_date", RateLimitError),
    ("rate_limit_malformed", RateLimitError),
    ("server_error", ServerError),
    ("unavailable", ServerError),
    ("drop", EndpointConnectionError),
    ("malformed", MalformedResponseError),
    ("empty_choices", MalformedResponseError),
    ("stream_drop", EndpointConnectionError),
    ("stream_error", ServerError),
    ("stream_context_length", ContextLengthError),
    ("context_length", ContextLengthError),
    ("bad_request", RequestRejectedError),
]


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("style", ["openai", "vllm", "sglang"])
@pytest.mark.parametrize(("kind", "expected"), FAULTS, ids=[k for k, _ in FAULTS])
async def test_each_fault_kind_raises_its_exception(
    kind: str, expected: type[BackendError], style: str, stream: bool
) -> None:
    error = await _attempt(kind, stream=stream, style=style)
    assert type(error) is expected, repr(error)
    if isinstance(error, RateLimitError):
        if kind == "rate_limit":
            assert error.retry_after == 7.0
        elif kind == "rate_limit_date":
            assert error.retry_after is not None and 5.0 <= error.retry_after <= 7.0
        else:
            assert error.retry_after is None
    if isinstance(error, ContextLengthError):
        assert error.max_context == 4096 and error.prompt_tokens == 5


@pytest.mark.anyio
async def test_a_stall_past_the_timeout_is_a_timeout() -> None:
    error = await _attempt("stall", stream=False, timeout=0.2)
    assert type(error) is EndpointTimeoutError


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("kind", "expected"), FAULTS, ids=[k for k, _ in FAULTS])
async def test_each_fault_kind_is_retried_or_not(
    kind: str, expected: type[BackendError], stream: bool
) -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(max_attempts=3, sleep=sleep, initial_backoff=1.0)
    config = SimConfig(seed=1, context_window=4096, faults=Faults(script=[kind], retry_after=7))
    async with SimServer(config) as server:
        async with OpenAIBackend(server.base_url, "pacore-sim", stream=stream) as backend:
            if expected is RequestRejectedError:
                with pytest.raises(RequestRejectedError) as rejected:
                    await call_with_retries(backend, REQUEST, policy)
                assert rejected.value.attempt == 1 and sleep.calls == []
                return
            call = await call_with_retries(backend, REQUEST, policy)
    assert call.attempts == 2
    assert call.completions[0].content and "\\boxed{" in call.completions[0].content
    [waited] = sleep.calls
    if kind == "rate_limit":
        assert waited == 7.0
    elif kind == "rate_limit_date":
        assert 5.0 <= waited <= 7.0
    elif expected is ContextLengthError:
        # Retried once at once, with max_tokens lowered to what the context leaves.
        assert waited == 0.0 and call.request.sampling.max_tokens == 4096 - 5 - 16
    else:
        assert 0.5 <= waited <= 1.0  # the first back-off (equal jitter), also for a malformed Retry-After


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"timeout": -5}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": "60"}, "timeout"),
        ({"token_limit": "max_new_tokens"}, "token_limit"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ],
)
def test_bad_options_get_one_line_naming_the_option(options: dict[str, Any], named: str) -> None:
    with pytest.raises(UsageError) as bad:
        OpenAIBackend("http://127.0.0.1:30000/v1", **options)
    message = str(bad.value)
    assert message.startswith(named) and "\n" not in message
    assert repr(next(iter(options.values())))[:3] in message or "positive" in message


@pytest.mark.anyio
async def test_a_key_echoed_by_the_endpoint_never_reaches_the_exception() -> None:
    # Some gateways quote the request's Authorization header in their error body.
    key = "sk-live-0f9e8d7c6b5a"

    async def chat(request: web.Request) -> web.Response:
        echoed = request.headers["Authorization"]
        body = {"error": {"message": f"Invalid credentials: {echoed}", "type": "invalid_request_error"}}
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with AppServer(app, host="127.0.0.1", port=0) as server:
        async with OpenAIBackend(f"{server.root_url}/v1", "m", api_key=key) as backend:
            with pytest.raises(AuthenticationError) as refused:
                await backend.generate(REQUEST)
    assert key not in str(refused.value) and key not in (refused.value.body or "")
    assert "Bearer ***" in str(refused.value)


@pytest.mark.anyio
@pytest.mark.parametrize("choice", [b"[1]", b'[{"index": 0, "delta": "text"}]'])
async def test_a_streamed_choice_that_is_not_an_object_is_malformed(choice: bytes) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": ' + choice + b"}\n\ndata: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with AppServer(app, host="127.0.0.1", port=0) as server:
        async with OpenAIBackend(f"{server.root_url}/v1", "m", stream=True) as backend:
            with pytest.raises(MalformedResponseError, match="streamed a choice without a delta object"):
                await backend.generate(REQUEST)
