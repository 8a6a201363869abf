"""`pacore serve` over real HTTP: the OpenAI SDK as the client, the simulated server as the upstream."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
import anyio
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from typer.testing import CliRunner

from pacore_agent import Coordinator, Latency, OpenAIBackend, RetryPolicy, SimConfig, SimServer
from pacore_agent.backends.base import SamplingParams
from pacore_agent.cli import app
from pacore_agent.exceptions import UsageError
from pacore_agent.results import Usage
from pacore_agent.serving.server import PacoreServer, schedule_for_model
from tests.helpers import REPO, FakeSleep, closed_port, wait_until

pytestmark = pytest.mark.anyio

PROBLEM = "Let $x$ be the number of primes below 20. Find $x$."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROBLEM}]


@asynccontextmanager
async def served(
    config: SimConfig | None = None,
    *,
    sim_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **server_options: Any,
) -> AsyncIterator[tuple[SimServer, PacoreServer]]:
    """A PaCoRe server on loopback whose upstream is a simulated server on loopback."""
    config = config or SimConfig(seed=3, split_reasoning=True)
    async with SimServer(config, sleep=sim_sleep) as sim:
        async with OpenAIBackend(sim.base_url, "pacore-sim") as upstream:
            server_options.setdefault("retry", RetryPolicy(max_attempts=2, sleep=FakeSleep()))
            async with PacoreServer(upstream, **server_options) as server:
                yield sim, server


def client(server: PacoreServer, api_key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=api_key, max_retries=0)


async def get(url: str, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.json()


async def post(url: str, data: bytes, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=headers) as response:
        return response.status, await response.json()


def root(server: PacoreServer) -> str:
    return server.base_url.removesuffix("/v1")


async def assert_still_serving(server: PacoreServer, api_key: str = "unused") -> None:
    async with client(server, api_key) as sdk:
        answer = await sdk.chat.completions.create(model="pacore:[2]", messages=MESSAGES)
    assert answer.choices[0].message.content


def usage_of(raw: Any) -> Usage:
    return Usage(
        prompt_tokens=raw.prompt_tokens,
        completion_tokens=raw.completion_tokens,
        reasoning_tokens=raw.completion_tokens_details.reasoning_tokens,
        cached_tokens=raw.prompt_tokens_details.cached_tokens,
    )


# -- answers -----------------------------------------------------------------------------------------


async def test_non_streaming_answer_usage_and_trace() -> None:
    async with served() as (sim, server):
        async with client(server) as sdk:
            answer = await sdk.chat.completions.create(
                model="pacore-high",
                messages=MESSAGES,
                temperature=0.6,
                top_p=0.95,
                max_tokens=4000,
                seed=11,
            )
        served_usage = sim.engine.usage_served
        bodies = list(sim.engine.requests)
        # The same solve run directly gives the same answer: the options reached the Coordinator.
        async with OpenAIBackend(sim.base_url, "pacore-sim") as direct:
            sampling = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=4000, seed=11)
            expected = await Coordinator("high", direct, sampling=sampling, seed=11).solve(PROBLEM)
    assert expected.final is not None
    message = answer.choices[0].message
    assert message.content == expected.final.content == expected.answer
    assert message.content is not None and "\\boxed{" in message.content
    assert (
        message.model_extra is not None
        and message.model_extra["reasoning_content"] == expected.final.reasoning
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "pacore-high" and answer.object == "chat.completion"
    # Usage: every trajectory of every round, as the upstream reported it.
    assert answer.usage is not None and usage_of(answer.usage) == served_usage
    assert answer.usage.total_tokens == served_usage.total_tokens
    assert served_usage.reasoning_tokens > 0 and served_usage.cached_tokens > 0
    trace = answer.model_extra["pacore"]  # type: ignore[index]
    assert trace["widths"] == [32, 4, 1] and trace["calls"] == 37 and len(trace["rounds"]) == 3
    assert trace["ttc_tokens"] == served_usage.completion_tokens
    assert [r["ok"] for r in trace["rounds"]] == [32, 4, 1]
    # Every trajectory of every round got the request's sampling settings.
    assert len(bodies) == 37
    assert {(b["temperature"], b["top_p"], b["max_tokens"]) for b in bodies} == {(0.6, 0.95, 4000)}
    assert all(isinstance(b["seed"], int) for b in bodies)


async def test_multi_turn_history_reaches_every_round() -> None:
    history: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You are a careful mathematician."},
        {"role": "user", "content": "Warm-up: what is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": PROBLEM},
    ]
    async with served() as (sim, server), client(server) as sdk:
        await sdk.chat.completions.create(model="pacore:2", messages=history)
    first, synthesis = sim.engine.requests[0]["messages"], sim.engine.requests[2]["messages"]
    assert first == history
    assert synthesis[:3] == history[:3]
    assert f"Original Problem:\n{PROBLEM}\n" in synthesis[3]["content"]


@pytest.mark.parametrize("split_reasoning", [True, False])
async def test_streaming_progress_then_final_tokens(split_reasoning: bool) -> None:
    async with served(SimConfig(seed=4, split_reasoning=split_reasoning)) as (sim, server):
        async with client(server) as sdk:
            plain = await sdk.chat.completions.create(model="pacore:[4,2]", messages=MESSAGES, seed=5)
            sim.engine.reset_stats()
            stream = await sdk.chat.completions.create(
                model="pacore:[4,2]",
                messages=MESSAGES,
                seed=5,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
    served_usage = sim.engine.usage_served
    deltas = [(c.choices[0].delta if c.choices else None) for c in chunks]
    assert deltas[0] is not None and deltas[0].role == "assistant"
    reasoning = [
        (i, d.model_extra["reasoning_content"])
        for i, d in enumerate(deltas)
        if d is not None and d.model_extra and d.model_extra.get("reasoning_content")
    ]
    content = [(i, d.content) for i, d in enumerate(deltas) if d is not None and d.content]
    progress = [(i, text) for i, text in reasoning if re.match(r"round \d", text)]
    lines = [text for _, text in progress]
    assert lines[:3] == [
        "round 1/3: 4 trajectories started\n",
        "round 1: 1/4 finished\n",
        "round 1: 2/4 finished\n",
    ]
    assert "round 2/3: 2 trajectories started\n" in lines and "round 2: 2/2 finished\n" in lines
    assert lines[-1] == "round 3/3: final synthesis from 2 messages\n"
    # Real progress first, then the final round's reasoning as it arrived (several chunks), then the
    # final trajectory's content in one piece once it finished (a retry could not splice into it).
    assert max(i for i, _ in progress) < min(i for i, _ in content)
    assert len(content) == 1 and content[0][1] == plain.choices[0].message.content
    final_reasoning = [text for i, text in reasoning if i > progress[-1][0]]
    assert len(final_reasoning) > 1 if split_reasoning else final_reasoning == []
    assert max(i for i, text in reasoning) < content[0][0]
    assert "".join(final_reasoning) == (
        (plain.choices[0].message.model_extra or {}).get("reasoning_content") or ""
    )
    # Then a finish chunk with the trace, a usage chunk, and [DONE] (the SDK stops on it).
    finish = chunks[-2]
    assert finish.choices[0].finish_reason == "stop"
    assert finish.model_extra is not None and finish.model_extra["pacore"]["widths"] == [4, 2, 1]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert usage_of(last.usage) == served_usage
    assert all(c.usage is None for c in chunks[:-1])


async def test_streaming_without_usage_option_sends_no_usage_chunk() -> None:
    async with served() as (_, server), client(server) as sdk:
        stream = await sdk.chat.completions.create(model="pacore:2", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_models_and_health() -> None:
    async with served() as (_, server), client(server) as sdk:
        page = await sdk.models.list()
        assert [m.id for m in page.data] == ["pacore-low", "pacore-medium", "pacore-high"]
        assert await get(f"{root(server)}/health") == (200, {"status": "ok"})


def test_model_names_select_the_schedule() -> None:
    assert schedule_for_model("pacore-low").rounds == (4, 1)
    assert schedule_for_model("pacore-medium").rounds == (16, 1)
    assert schedule_for_model("pacore-high").rounds == (32, 4, 1)
    assert schedule_for_model("pacore:[32,4]").rounds == (32, 4, 1)
    assert schedule_for_model("pacore:32,4").rounds == (32, 4, 1)
    with pytest.raises(UsageError, match="pacore-low, pacore-medium, pacore-high"):
        schedule_for_model("gpt-4o")
    with pytest.raises(UsageError, match="limit of 40"):
        schedule_for_model("pacore:[32,8]", max_trajectories=40)


# -- errors: each is OpenAI-style, and the server keeps serving -------------------------------------


async def test_unknown_model_is_404_naming_the_valid_ones() -> None:
    async with served() as (sim, server):
        async with client(server) as sdk:
            for name in ("gpt-4o", "pacore:abc", "pacore:[0]"):
                with pytest.raises(
                    openai.NotFoundError, match="pacore-low, pacore-medium, pacore-high"
                ) as caught:
                    await sdk.chat.completions.create(model=name, messages=MESSAGES)
                error = caught.value.body
                assert isinstance(error, dict)
                assert set(error) == {"message", "type", "param", "code"}
                assert error["param"] == "model" and error["code"] == "model_not_found"
            with pytest.raises(openai.BadRequestError, match="above this server's limit of 512"):
                await sdk.chat.completions.create(model="pacore:[400,400]", messages=MESSAGES)
        assert sim.engine.requests == []
        await assert_still_serving(server)


async def test_bad_requests_are_400() -> None:
    async with served() as (sim, server):
        async with client(server) as sdk:
            with pytest.raises(openai.BadRequestError, match=r"n=2 is not supported") as caught:
                await sdk.chat.completions.create(model="pacore-low", messages=MESSAGES, n=2)
            assert caught.value.body["param"] == "n"  # type: ignore[index]
            with pytest.raises(openai.BadRequestError, match="temperature must be within"):
                await sdk.chat.completions.create(model="pacore-low", messages=MESSAGES, temperature=5)
            with pytest.raises(openai.BadRequestError, match="last user message is empty"):
                await sdk.chat.completions.create(
                    model="pacore-low",
                    messages=[{"role": "user", "content": "  "}],
                )
        url = f"{server.base_url}/chat/completions"
        status, body = await post(url, b"{not json", **{"Content-Type": "application/json"})
        assert status == 400 and body["error"]["message"] == "request body is not valid JSON"
        status, body = await post(url, json.dumps({"model": "pacore-low"}).encode())
        assert status == 400 and body["error"]["param"] == "messages"
        status, body = await post(url, json.dumps({"messages": MESSAGES}).encode())
        assert status == 400 and body["error"]["param"] == "model"
        status, body = await get(f"{root(server)}/v1/nothing-here")
        assert status == 404 and body["error"]["type"] == "invalid_request_error"
        assert sim.engine.requests == []
        await assert_still_serving(server)


async def test_auth_required_when_configured_and_health_stays_open() -> None:
    async with served(api_key="serve-token-123") as (_, server):
        for key in ("wrong-token", "serve-token-1234"):
            async with client(server, key) as sdk:
                with pytest.raises(openai.AuthenticationError, match="API key") as caught:
                    await sdk.chat.completions.create(model="pacore-low", messages=MESSAGES)
                assert caught.value.body["code"] == "invalid_api_key"  # type: ignore[index]
                with pytest.raises(openai.AuthenticationError):
                    await sdk.models.list()
        status, body = await get(f"{server.base_url}/models")
        assert status == 401 and "missing API key" in body["error"]["message"]
        assert await get(f"{root(server)}/health") == (200, {"status": "ok"})
        assert "serve-token-123" not in repr(server)
        await assert_still_serving(server, "serve-token-123")


async def test_auth_off_accepts_requests_without_a_key() -> None:
    async with served() as (_, server):
        body = json.dumps({"model": "pacore:1", "messages": MESSAGES}).encode()
        status, answer = await post(f"{server.base_url}/chat/completions", body)
    assert status == 200 and answer["choices"][0]["message"]["content"]


async def test_request_over_the_size_limit_is_413() -> None:
    async with served(max_request_bytes=4096) as (sim, server):
        async with client(server) as sdk:
            with pytest.raises(
                openai.APIStatusError, match="exceeds this server's limit of 4,096 bytes"
            ) as caught:
                await sdk.chat.completions.create(
                    model="pacore-low",
                    messages=[{"role": "user", "content": "x " * 5000}],
                )
        assert caught.value.status_code == 413
        assert sim.engine.requests == []
        await assert_still_serving(server)


async def test_request_cannot_redirect_the_upstream() -> None:
    async with served() as (sim, server), client(server) as sdk:
        answer = await sdk.chat.completions.create(
            model="pacore:2",
            messages=MESSAGES,
            extra_body={"base_url": "http://198.51.100.7/v1", "api_key": "sk-elsewhere", "upstream": "x"},
        )
    assert answer.choices[0].message.content
    assert len(sim.engine.requests) == 3
    assert all(set(b) <= {"model", "messages", "temperature", "top_p", "seed"} for b in sim.engine.requests)


async def test_upstream_down_is_502_and_the_server_recovers() -> None:
    port = closed_port()
    async with OpenAIBackend(f"http://127.0.0.1:{port}/v1", "pacore-sim") as upstream:
        policy = RetryPolicy(max_attempts=2, sleep=FakeSleep())
        async with PacoreServer(upstream, retry=policy) as server, client(server) as sdk:
            with pytest.raises(openai.InternalServerError, match="could not talk to") as caught:
                await sdk.chat.completions.create(model="pacore-low", messages=MESSAGES)
            assert caught.value.status_code == 502
            assert caught.value.body["code"] == "round_failed"  # type: ignore[index]
            stream = await sdk.chat.completions.create(model="pacore-low", messages=MESSAGES, stream=True)
            seen: list[Any] = []
            with pytest.raises(openai.APIError, match="could not talk to"):
                async for chunk in stream:
                    seen.append(chunk)
            assert seen, "progress arrives before the error"
            assert await get(f"{root(server)}/health") == (200, {"status": "ok"})
            # The upstream comes back on the same port: the same server answers again.
            async with SimServer(SimConfig(seed=1), port=port):
                await assert_still_serving(server)


async def test_credentials_in_the_upstream_url_do_not_reach_the_client() -> None:
    url = f"http://ops:hunter2@127.0.0.1:{closed_port()}/v1"
    async with OpenAIBackend(url, "pacore-sim") as upstream:
        policy = RetryPolicy(max_attempts=1)
        async with PacoreServer(upstream, retry=policy) as server, client(server) as sdk:
            with pytest.raises(openai.InternalServerError, match=r"http://\*\*\*@127\.0\.0\.1") as caught:
                await sdk.chat.completions.create(model="pacore-low", messages=MESSAGES)
    assert "hunter2" not in json.dumps(caught.value.body) and "ops:" not in str(caught.value)


async def test_upstream_rejecting_the_key_does_not_leak_it() -> None:
    secret = "sk-upstream-secret-987"
    async with SimServer(SimConfig(), api_key="the-right-key") as sim:
        async with OpenAIBackend(sim.base_url, "pacore-sim", api_key=secret) as upstream:
            async with PacoreServer(upstream) as server, client(server) as sdk:
                with pytest.raises(openai.InternalServerError) as caught:
                    await sdk.chat.completions.create(model="pacore-low", messages=MESSAGES)
                texts = [str(caught.value), json.dumps(caught.value.body), repr(server)]
    assert "answered 401" in texts[0]
    assert all(secret not in text and "the-right-key" not in text for text in texts)


# -- cancellation ----------------------------------------------------------------------------------


async def test_streaming_client_disconnect_cancels_the_upstream_requests() -> None:
    config = SimConfig(latency=Latency(stall_probability=1.0))
    async with served(config) as (sim, server):
        async with client(server) as sdk:
            stream = await sdk.chat.completions.create(model="pacore-low", messages=MESSAGES, stream=True)
            async for chunk in stream:
                delta = chunk.choices[0].delta
                if (delta.model_extra or {}).get("reasoning_content", "").startswith("round 1/2"):
                    break
            await wait_until(lambda: sim.engine.in_flight == 4)
            await stream.close()
        await wait_until(lambda: sim.engine.disconnects == 4)
        assert sim.engine.in_flight == 0 and sim.engine.served == 0
        assert await get(f"{root(server)}/health") == (200, {"status": "ok"})


async def test_idle_streams_get_keep_alive_comments_the_sdk_ignores() -> None:
    config = SimConfig(latency=Latency(stall_probability=1.0))
    async with served(config, heartbeat_s=0.005) as (sim, server):
        body = json.dumps({"model": "pacore-low", "messages": MESSAGES, "stream": True}).encode()
        url = f"{server.base_url}/chat/completions"
        async with aiohttp.ClientSession() as session, session.post(url, data=body) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            seen = b""
            with anyio.fail_after(10):
                while seen.count(b": keep-alive\n\n") < 2:
                    seen += await response.content.readany()
        await wait_until(lambda: sim.engine.disconnects == 4)

    # A slow upstream: keep-alives interleave with the chunks, and the SDK reads past them.
    async def slow(_: float) -> None:
        await anyio.sleep(0.02)

    config = SimConfig(latency=Latency(median=1.0))
    async with served(config, heartbeat_s=0.005, sim_sleep=slow) as (sim, server), client(server) as sdk:
        stream = await sdk.chat.completions.create(model="pacore:[2]", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1])


async def test_non_streaming_client_disconnect_cancels_the_upstream_requests() -> None:
    config = SimConfig(latency=Latency(stall_probability=1.0))
    async with served(config) as (sim, server):
        async with client(server) as sdk, anyio.create_task_group() as group:
            group.start_soon(partial(sdk.chat.completions.create, model="pacore:[3]", messages=MESSAGES))
            await wait_until(lambda: sim.engine.in_flight == 3)
            group.cancel_scope.cancel()
        await wait_until(lambda: sim.engine.disconnects == 3)
        assert sim.engine.in_flight == 0


# -- configuration and the command line ------------------------------------------------------------


async def test_bad_server_options_fail_at_construction() -> None:
    async with OpenAIBackend("http://127.0.0.1:9/v1", "m") as upstream:
        with pytest.raises(UsageError, match="max_request_bytes"):
            PacoreServer(upstream, max_request_bytes=0)
        with pytest.raises(UsageError, match="api_key is empty"):
            PacoreServer(upstream, api_key="")
        with pytest.raises(UsageError, match="must not set seed"):
            PacoreServer(upstream, coordinator_options={"seed": 1})


def test_serve_help() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--upstream-base-url", "--upstream-model", "--api-key-env", "--max-request-bytes"):
        assert option in result.output


def test_serve_refuses_an_unset_token_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACORE_TEST_UNSET_TOKEN", raising=False)
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--upstream-base-url",
            "http://127.0.0.1:9/v1",
            "--upstream-model",
            "m",
            "--api-key-env",
            "PACORE_TEST_UNSET_TOKEN",
        ],
    )
    assert result.exit_code == 2
    assert "PACORE_TEST_UNSET_TOKEN" in result.output


async def test_pacore_serve_command_end_to_end() -> None:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "PACORE_TEST_SERVE_TOKEN": "cli-token-42",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": pythonpath,
    }
    async with SimServer(SimConfig(seed=2, split_reasoning=True)) as sim:
        command = [
            sys.executable,
            "-m",
            "pacore_agent.cli",
            "serve",
            "--upstream-base-url",
            sim.base_url,
            "--upstream-model",
            "pacore-sim",
            "--port",
            "0",
            "--api-key-env",
            "PACORE_TEST_SERVE_TOKEN",
            "--temperature",
            "0.6",
            "--top-p",
            "none",
            "--max-tokens",
            "4000",
            "--extra-body",
            '{"top_k": 20}',
        ]
        process = await anyio.open_process(command, cwd=REPO, env=env, stderr=subprocess.STDOUT)
        try:
            assert process.stdout is not None
            output = ""
            with anyio.fail_after(60):
                async for data in process.stdout:
                    output += data.decode()
                    if match := re.search(r"at (http://127\.0\.0\.1:\d+/v1) ", output):
                        break
            assert match, output
            base_url = match.group(1)
            assert "cli-token-42" not in output
            assert await get(f"{base_url.removesuffix('/v1')}/health") == (200, {"status": "ok"})
            async with openai.AsyncOpenAI(base_url=base_url, api_key="cli-token-42", max_retries=0) as sdk:
                answer = await sdk.chat.completions.create(model="pacore:[3]", messages=MESSAGES)
            assert answer.choices[0].message.content and "\\boxed{" in answer.choices[0].message.content
            assert answer.usage is not None and usage_of(answer.usage) == sim.engine.usage_served
            assert sim.engine.served == 4
            # The generation options are every request's defaults; top_p was left out.
            for body in sim.engine.requests:
                assert body["temperature"] == 0.6 and body["top_k"] == 20 and "top_p" not in body
                assert body.get("max_tokens", body.get("max_completion_tokens")) == 4000
        finally:
            process.terminate()
            with anyio.fail_after(30):
                code = await process.wait()
            await process.aclose()
    assert code == 0
