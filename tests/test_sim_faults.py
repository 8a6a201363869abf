"""The simulated server's faults on the wire: the bodies, headers and SSE shapes of OpenAI, vLLM and SGLang.

Raw aiohttp requests (no pacore client), so these tests pin what the double sends, not how pacore reads it.
"""

from __future__ import annotations

import email.utils
import json
from typing import Any

import aiohttp
import pytest

from pacore_agent.backends.sim import FAULT_KINDS, Faults, SimConfig
from pacore_agent.backends.sim_server import SimServer
from pacore_agent.exceptions import UsageError

pytestmark = pytest.mark.anyio

BODY: dict[str, Any] = {"model": "pacore-sim", "messages": [{"role": "user", "content": "What is 6 * 7?"}]}
NOW = 1_700_000_000.0


async def _post(server: SimServer, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.base_url}/chat/completions", json=body) as response:
            return response.status, dict(response.headers), await response.read()


def _sse(raw: bytes) -> list[Any]:
    events = [line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


def _served(script: list[str | None], **config: Any) -> SimServer:
    return SimServer(SimConfig(faults=Faults(script=script, retry_after=7), **config), clock=lambda: NOW)


async def test_rate_limit_retry_after_as_seconds_date_and_garbage() -> None:
    async with _served(["rate_limit", "rate_limit_date", "rate_limit_malformed"]) as server:
        seconds = await _post(server, BODY)
        date = await _post(server, BODY)
        garbage = await _post(server, BODY)
    assert [r[0] for r in (seconds, date, garbage)] == [429, 429, 429]
    assert seconds[1]["Retry-After"] == "7"
    parsed = email.utils.parsedate_to_datetime(date[1]["Retry-After"])
    assert parsed.timestamp() == NOW + 7 and date[1]["Retry-After"].endswith("GMT")
    assert garbage[1]["Retry-After"] == "soon"
    error = json.loads(seconds[2])["error"]
    assert error["code"] == 429 and error["type"] == "RateLimitError"  # vLLM's envelope by default


@pytest.mark.parametrize("status_kind", [(500, "server_error"), (503, "unavailable")])
async def test_server_errors_in_each_style(status_kind: tuple[int, str]) -> None:
    status, kind = status_kind
    bodies = {}
    for style in ("openai", "vllm", "sglang"):
        async with _served([kind], error_style=style) as server:
            got, _, raw = await _post(server, BODY)
        assert got == status
        bodies[style] = json.loads(raw)
    assert bodies["openai"]["error"]["type"] == "server_error" and bodies["openai"]["error"]["code"] is None
    assert bodies["vllm"]["error"]["code"] == status
    assert bodies["sglang"]["object"] == "error" and bodies["sglang"]["code"] == status


async def test_reset_non_json_and_empty_choices() -> None:
    async with _served(["drop", "malformed", "empty_choices"]) as server:
        with pytest.raises(aiohttp.ClientError):
            await _post(server, BODY)
        status, headers, raw = await _post(server, BODY)
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        status, _, raw = await _post(server, BODY)
        assert status == 200 and json.loads(raw)["choices"] == []


async def test_stream_dropped_mid_answer() -> None:
    async with _served(["stream_drop", "stream_drop"]) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{server.base_url}/chat/completions", json={**BODY, "stream": True}
            ) as r:
                assert r.status == 200
                received = b""
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for chunk in r.content.iter_any():
                        received += chunk
        # Some content arrived before the cut, and no end of stream.
        events = _sse(received)
        assert any(e["choices"][0]["delta"].get("content") for e in events if e != "[DONE]")
        assert "[DONE]" not in events
        with pytest.raises(aiohttp.ClientPayloadError):
            await _post(server, BODY)  # not streamed: the body stops part-way
        assert server.engine.served == 0


@pytest.mark.parametrize("style", ["vllm", "sglang"])
async def test_sse_error_chunk_mid_stream(style: str) -> None:
    async with _served(
        ["stream_error", "stream_context_length"], error_style=style, context_window=64
    ) as server:
        _, _, first = await _post(server, {**BODY, "stream": True, "max_tokens": 16})
        _, _, second = await _post(server, {**BODY, "stream": True, "max_tokens": 16})
    for raw, status in ((first, 500), (second, 400)):
        events = _sse(raw)
        assert events[-1] == "[DONE]"
        error = events[-2]["error"]
        assert error["code"] == status
        assert any(e["choices"][0]["delta"].get("content") for e in events[:-2])
        if style == "sglang":
            assert error["object"] == "error"
    message = _sse(second)[-2]["error"]["message"]
    assert "maximum context length" in message and "64 tokens" in message


async def test_stream_faults_without_streaming_are_plain_errors() -> None:
    async with _served(["stream_error", "stream_context_length"]) as server:
        first = await _post(server, BODY)
        second = await _post(server, BODY)
    assert first[0] == 500 and second[0] == 400
    assert "maximum context length" in json.loads(second[2])["error"]["message"]


@pytest.mark.parametrize(
    ("field", "value", "code", "message"),
    [
        (
            "top_p",
            1.0,
            "unsupported_parameter",
            "Unsupported parameter: 'top_p' is not supported with this model.",
        ),
        (
            "max_tokens",
            100,
            "unsupported_parameter",
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
        ),
        (
            "temperature",
            0.7,
            "unsupported_value",
            "Unsupported value: 'temperature' does not support 0.7 with this model. "
            "Only the default (1) value is supported.",
        ),
    ],
)
async def test_hosted_reasoning_refuses_like_openai(
    field: str, value: object, code: str, message: str
) -> None:
    async with SimServer(SimConfig(model="gpt-5", hosted_reasoning=True)) as server:
        status, _, raw = await _post(server, {**BODY, "model": "gpt-5", field: value})
    assert status == 400
    assert json.loads(raw) == {
        "error": {"message": message, "type": "invalid_request_error", "param": field, "code": code}
    }


async def test_hosted_reasoning_answers_what_it_accepts() -> None:
    async with SimServer(SimConfig(model="gpt-5", hosted_reasoning=True)) as server:
        body = {
            **BODY,
            "model": "gpt-5",
            "temperature": 1,
            "max_completion_tokens": 4000,
            "reasoning_effort": "high",
        }
        status, _, raw = await _post(server, body)
        missing, _, _ = await _post(server, {**BODY, "model": "gpt-4-nonexistent"})
    assert status == 200 and missing == 404
    answer = json.loads(raw)
    message = answer["choices"][0]["message"]
    assert "\\boxed{" in message["content"] and "<think>" not in message["content"]
    assert "reasoning_content" not in message
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_fault_kinds_are_checked() -> None:
    assert {"rate_limit_date", "rate_limit_malformed", "empty_choices", "stream_drop", "stream_error"} <= set(
        FAULT_KINDS
    )
    with pytest.raises(UsageError, match="unknown fault 'teapot'"):
        Faults(script=["teapot"])
    with pytest.raises(UsageError, match="error_style"):
        SimConfig(error_style="tgi")
