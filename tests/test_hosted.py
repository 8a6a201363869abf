"""Requests fit the endpoint: the README's hosted-model recipe against a server that answers as GPT-5 does.

The simulated server in ``hosted_reasoning`` mode refuses ``top_p`` and ``max_tokens`` with 400
``unsupported_parameter`` and a temperature other than 1 with ``unsupported_value``, in OpenAI's exact
body. The backend must leave unset fields out, adapt once per refused field with one warning, and never
count that as a failed attempt.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from pacore_agent import Coordinator, OpenAIBackend, SamplingParams, SelfConsistency, SimConfig, SimServer
from pacore_agent.backends.base import GenerationRequest
from pacore_agent.exceptions import UnsupportedParameterError
from pacore_agent.retry import RetryPolicy, call_with_retries
from pacore_agent.serving.app import AppServer
from tests.helpers import FakeSleep

pytestmark = pytest.mark.anyio

PROBLEM = "How many primes are there below 30?"
KEY = "sk-test-hosted-0123456789"


@asynccontextmanager
async def hosted(**config: Any) -> AsyncIterator[SimServer]:
    settings = SimConfig(model="gpt-5", hosted_reasoning=True, seed=4, answers={PROBLEM: "10"}, **config)
    async with SimServer(settings, api_key=KEY) as server:
        yield server


def _recipe(server: SimServer, **options: Any) -> OpenAIBackend:
    # The README's recipe, pointed at the local double of the hosted endpoint.
    return OpenAIBackend(
        server.base_url, "gpt-5", api_key=KEY, extra_body={"reasoning_effort": "high"}, **options
    )


async def test_readme_recipe_with_self_consistency_and_coordinator(caplog: pytest.LogCaptureFixture) -> None:
    async with hosted() as server, _recipe(server) as backend:
        voted = await SelfConsistency(4, backend).solve(PROBLEM)
        solved = await Coordinator([4], backend=backend).solve(PROBLEM)
    for result in (voted, solved):
        assert result.answer is not None
        assert all(t.status == "ok" for r in result.rounds for t in r.trajectories)
    # Nothing the user did not set was sent, so nothing was refused and nothing was warned about.
    assert server.engine.requests and all(
        set(body) <= {"model", "messages", "n", "reasoning_effort"} for body in server.engine.requests
    )
    assert all(body["reasoning_effort"] == "high" for body in server.engine.requests)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_paper_settings_adapt_once_per_field_without_a_failed_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sampling = SamplingParams.paper(temperature=0.7, max_tokens=3000)
    sleep = FakeSleep()
    policy = RetryPolicy(max_attempts=1, sleep=sleep)  # one attempt: an adaptation must not use it up
    request = GenerationRequest(messages=[{"role": "user", "content": PROBLEM}], n=2, sampling=sampling)
    async with hosted() as server, _recipe(server) as backend:
        caplog.set_level(logging.WARNING, logger="pacore_agent.backends.openai_compat")
        first = await call_with_retries(backend, request, policy)
        again = await call_with_retries(backend, request, policy)
        voted = await SelfConsistency(4, backend, sampling=sampling).solve(PROBLEM)
    assert first.attempts == again.attempts == 1 and sleep.calls == []
    assert len(first.completions) == 2 and voted.answer is not None
    refused = [
        (b.get("top_p"), b.get("max_tokens"), b.get("temperature")) for b in server.engine.requests[:4]
    ]
    # One field at a time, as OpenAI answers: top_p dropped, max_tokens renamed, temperature reset.
    assert refused == [(1.0, 3000, 0.7), (None, 3000, 0.7), (None, None, 0.7), (None, None, None)]
    for body in server.engine.requests[3:]:
        assert body["max_completion_tokens"] == 3000
        assert not {"top_p", "max_tokens", "temperature"} & set(body)
    assert backend.token_limit == "max_completion_tokens"
    assert backend.refused == {"top_p": "unsupported_parameter", "temperature": "unsupported_value"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert any("'top_p'" in w for w in warnings) and any("'temperature'" in w for w in warnings)
    assert any("'max_tokens'" in w and "'max_completion_tokens'" in w for w in warnings)
    assert all(KEY not in w for w in warnings)


async def test_concurrent_requests_warn_once_per_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pacore_agent.backends.openai_compat")
    async with hosted() as server, _recipe(server) as backend:
        result = await Coordinator([8], backend=backend, sampling=SamplingParams.paper()).solve(PROBLEM)
    assert all(t.status == "ok" for t in result.rounds[0].trajectories)
    assert len([r for r in caplog.records if "'top_p'" in r.getMessage()]) == 1


async def test_hosted_urls_send_max_completion_tokens_and_local_ones_max_tokens() -> None:
    assert OpenAIBackend("https://api.openai.com/v1", api_key="k").token_limit == "max_completion_tokens"
    assert OpenAIBackend("http://127.0.0.1:30000/v1").token_limit == "max_tokens"
    async with hosted() as server:
        backend = _recipe(server, token_limit="max_completion_tokens")
        async with backend:
            request = GenerationRequest(
                [{"role": "user", "content": PROBLEM}], sampling=SamplingParams(max_tokens=99)
            )
            await backend.generate(request)
    [body] = server.engine.requests  # accepted at once
    assert body["max_completion_tokens"] == 99 and "max_tokens" not in body


async def test_a_server_that_only_knows_max_tokens_gets_max_tokens() -> None:
    config = SimConfig(seed=1, unsupported_params=("max_completion_tokens",))
    async with SimServer(config) as server:
        async with OpenAIBackend(
            server.base_url, "pacore-sim", token_limit="max_completion_tokens"
        ) as backend:
            request = GenerationRequest(
                [{"role": "user", "content": PROBLEM}], sampling=SamplingParams(max_tokens=50)
            )
            await backend.generate(request)
            await backend.generate(request)
    assert [("max_completion_tokens" in b, b.get("max_tokens")) for b in server.engine.requests] == [
        (True, None),
        (False, 50),
        (False, 50),
    ]


async def test_a_server_refusing_both_token_limits_gets_none() -> None:
    config = SimConfig(seed=1, unsupported_params=("max_completion_tokens", "max_tokens"))
    async with SimServer(config) as server:
        async with OpenAIBackend(server.base_url, "pacore-sim") as backend:
            request = GenerationRequest(
                [{"role": "user", "content": PROBLEM}], sampling=SamplingParams(max_tokens=50)
            )
            [completion] = await backend.generate(request)
    assert completion.content
    last = server.engine.requests[-1]
    assert "max_tokens" not in last and "max_completion_tokens" not in last
    assert len(server.engine.requests) == 3


async def test_a_refused_extra_body_field_is_dropped_and_other_rejections_raise() -> None:
    config = SimConfig(seed=1, unsupported_params=("reasoning_effort",))
    async with SimServer(config) as server:
        async with OpenAIBackend(
            server.base_url, "pacore-sim", extra_body={"reasoning_effort": "high"}
        ) as backend:
            request = GenerationRequest([{"role": "user", "content": PROBLEM}])
            await backend.generate(request)
            assert backend.refused == {"reasoning_effort": "unsupported_parameter"}


async def test_a_field_refused_again_after_dropping_it_is_raised() -> None:
    # A server (or a proxy in front of it) that keeps refusing a field already left out: resending
    # cannot help, so the second refusal is raised instead of looping.
    refusal = {
        "error": {
            "message": "Unsupported parameter: 'top_p' is not supported with this model.",
            "type": "invalid_request_error",
            "param": "top_p",
            "code": "unsupported_parameter",
        }
    }
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response(refusal, status=400)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with AppServer(app, host="127.0.0.1", port=0) as server:
        async with OpenAIBackend(f"{server.root_url}/v1", "gpt-5") as backend:
            request = GenerationRequest(
                [{"role": "user", "content": PROBLEM}], sampling=SamplingParams(top_p=0.5)
            )
            with pytest.raises(UnsupportedParameterError) as refused:
                await backend.generate(request)
    assert refused.value.param == "top_p" and not refused.value.retryable
    assert [b.get("top_p") for b in seen] == [0.5, None]


async def test_a_server_refusing_stream_options_streams_and_counts_its_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pacore_agent.backends.openai_compat")
    config = SimConfig(seed=1, unsupported_params=("stream_options",))
    async with SimServer(config) as server:
        async with OpenAIBackend(server.base_url, "pacore-sim", stream=True) as backend:
            [completion] = await backend.generate(GenerationRequest([{"role": "user", "content": PROBLEM}]))
    assert completion.content and completion.usage.estimated and completion.usage.completion_tokens > 0
    assert [("stream_options" in b, b.get("stream")) for b in server.engine.requests] == [
        (True, True),
        (False, True),
    ]
    assert ["'stream_options'" in r.getMessage() for r in caplog.records] == [True]
