"""SGLang backend: launch/attach/shutdown, the native API, error mapping and server death.

SGLang itself needs CUDA, so every test runs against `pacore_agent.testing.fake_sglang`: in-process for
the HTTP API, and as a real subprocess (through `SGLangServer`'s overridable command) for the process
lifecycle. The chat path uses a stub backend; the native path goes over real HTTP.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from pacore_agent.backends.base import Backend, Completion, DeltaCallback, GenerationRequest
from pacore_agent.backends.errors import error_from_response
from pacore_agent.backends.sglang import (
    NativeCompletion,
    SGLangBackend,
    SGLangNativeClient,
    SGLangServer,
    SGLangServerError,
)
from pacore_agent.exceptions import (
    AuthenticationError,
    BackendError,
    ConfigurationError,
    ContextLengthError,
    EndpointConnectionError,
    MalformedResponseError,
    RateLimitError,
    RequestRejectedError,
    ServerError,
    UsageError,
)
from pacore_agent.results import Usage
from pacore_agent.testing.fake_sglang import DIE_EXIT_CODE, EOS_TOKEN_ID, FakeSGLangServer
from tests.processes import FAKE_COMMAND, FAKE_ENV, group_members, running

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="process-group checks read /proc")


# -- helpers --------------------------------------------------------------------------------------


def _launch(*extra: str, **kwargs: Any) -> SGLangBackend:
    kwargs.setdefault("startup_timeout", 60.0)
    kwargs.setdefault("shutdown_timeout", 10.0)
    return SGLangBackend.launch(
        "fake/model", command=FAKE_COMMAND, env=FAKE_ENV, extra_args=list(extra), **kwargs
    )


async def _fake_state(base_url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/_fake/state") as response:
        state: dict[str, Any] = await response.json()
        return state


class StubChat(Backend):
    """Stands in for the OpenAI-compatible chat backend."""

    name = "stub-chat"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GenerationRequest] = []
        self.closed = False

    async def generate(
        self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
    ) -> list[Completion]:
        self.requests.append(request)
        return [Completion(content=f"answer {i}", finish_reason="stop") for i in range(request.n)]

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
async def fake(anyio_backend: str) -> AsyncIterator[FakeSGLangServer]:
    async with FakeSGLangServer("fake/model", context_length=64, vocab_size=1000) as server:
        yield server


@pytest.fixture
async def backend(fake: FakeSGLangServer) -> AsyncIterator[SGLangBackend]:
    async with SGLangBackend.attach(fake.base_url, chat_backend=StubChat()) as attached:
        yield attached


# -- /generate ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_generate_ids_returns_token_ids_and_one_logprob_per_token(backend: SGLangBackend) -> None:
    [out] = await backend.generate_ids([5, 6, 7], {"max_new_tokens": 16, "temperature": 1.0})

    assert isinstance(out, NativeCompletion)
    assert out.logprobs is not None
    assert len(out.token_ids) == len(out.logprobs) == out.completion_tokens > 0
    assert all(lp <= 0.0 for lp in out.logprobs)
    assert out.prompt_tokens == 3
    assert out.finish_reason in ("stop", "length")
    if out.finish_reason == "stop":
        assert out.token_ids[-1] == EOS_TOKEN_ID
        assert out.finish_details == {"type": "stop", "matched": EOS_TOKEN_ID}
    assert out.weight_version == "default"
    assert out.usage == Usage(prompt_tokens=3, completion_tokens=out.completion_tokens)
    assert out.text is not None
    # Deterministic: the same request gives the same sequence.
    [again] = await backend.generate_ids([5, 6, 7], {"max_new_tokens": 16, "temperature": 1.0})
    assert (again.token_ids, again.logprobs) == (out.token_ids, out.logprobs)


@pytest.mark.anyio
async def test_generate_ids_orders_a_batch_prompt_by_prompt_then_sample_by_sample(
    backend: SGLangBackend, fake: FakeSGLangServer
) -> None:
    sampling = {"max_new_tokens": 8, "temperature": 1.0}
    outs = await backend.generate_ids([[1, 2], [3, 4, 5]], sampling, n=3)

    assert [(o.prompt_index, o.sample_index) for o in outs] == [(p, s) for p in range(2) for s in range(3)]
    assert [o.prompt_tokens for o in outs] == [2, 2, 2, 3, 3, 3]
    for out in outs:
        assert out.logprobs is not None
        assert len(out.token_ids) == len(out.logprobs) == out.completion_tokens
    assert fake.generate_requests == 1  # one batched request
    # The n copies sent by the client are the server's n samples, in the same order.
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{fake.base_url}/generate",
            json={
                "input_ids": [[1, 2], [3, 4, 5]],
                "sampling_params": {**sampling, "n": 3},
                "return_logprob": True,
            },
        ) as response,
    ):
        raw = await response.json()
    assert [item["output_ids"] for item in raw] == [o.token_ids for o in outs]


@pytest.mark.anyio
async def test_generate_ids_without_logprobs_reads_output_ids(backend: SGLangBackend) -> None:
    [out] = await backend.generate_ids([9, 9], {"max_new_tokens": 4}, return_logprob=False)
    assert out.logprobs is None
    assert len(out.token_ids) == out.completion_tokens


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("input_ids", "kwargs"),
    [
        ([], {}),
        ([[]], {}),
        (["a", "b"], {}),
        ([[1], 2], {}),
        ([1, 2], {"n": 0}),
        ([1, 2], {"sampling": {"n": 2}}),
    ],
)
async def test_generate_ids_rejects_bad_input_before_sending(
    backend: SGLangBackend, fake: FakeSGLangServer, input_ids: Any, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(UsageError):
        await backend.generate_ids(input_ids, **kwargs)
    assert fake.generate_requests == 0


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_context_length_errors_carry_the_limit_and_prompt_size(backend: SGLangBackend) -> None:
    with pytest.raises(ContextLengthError) as too_much:
        await backend.generate_ids(list(range(3, 13)), {"max_new_tokens": 100})
    assert too_much.value.status_code == 400
    assert (too_much.value.max_context, too_much.value.prompt_tokens) == (64, 10)
    assert "maximum context length" in (too_much.value.body or "")
    assert not too_much.value.retryable

    with pytest.raises(ContextLengthError) as too_long:
        await backend.generate_ids(list(range(3, 73)), {"max_new_tokens": 1})
    assert (too_long.value.max_context, too_long.value.prompt_tokens) == (64, 70)


@pytest.mark.anyio
async def test_bad_requests_become_request_rejected_errors_with_sglang_message(
    backend: SGLangBackend,
) -> None:
    with pytest.raises(RequestRejectedError) as bad_temperature:
        await backend.generate_ids([3, 4], {"temperature": -1.0})
    assert not isinstance(bad_temperature.value, ContextLengthError)
    assert bad_temperature.value.status_code == 400
    assert "temperature must be non-negative" in str(bad_temperature.value)
    assert json.loads(bad_temperature.value.body or "")["error"]["message"].startswith("temperature")

    with pytest.raises(RequestRejectedError, match="vocab size"):
        await backend.generate_ids([5000], {"max_new_tokens": 1})


@pytest.mark.anyio
async def test_fake_answers_malformed_requests_in_sglang_shapes(fake: FakeSGLangServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.base_url}/generate", json={"sampling_params": {}}) as response:
            assert response.status == 400
            assert await response.json() == {
                "error": {"message": "Either text, input_ids or input_embeds should be provided."}
            }
        async with session.post(f"{fake.base_url}/generate", data=b"not json") as response:
            assert response.status == 400
            body = await response.json()
            assert (body["object"], body["code"]) == ("error", 400)
        async with session.post(f"{fake.base_url}/update_weights_from_disk", json={}) as response:
            assert response.status == 400
            assert (await response.json())["object"] == "error"


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected", "message"),
    [
        (
            400,
            {"error": {"message": "Either text, input_ids or input_embeds should be provided."}},
            {},
            RequestRejectedError,
            "Either text",
        ),
        (
            400,
            {"object": "error", "message": "bad field", "type": "Bad Request", "param": None, "code": 400},
            {},
            RequestRejectedError,
            "bad field",
        ),
        (
            400,
            {"success": False, "message": "Failed to load", "num_paused_requests": 0},
            {},
            RequestRejectedError,
            "Failed to load",
        ),
        (401, {"error": "Unauthorized"}, {}, AuthenticationError, "Unauthorized"),
        (404, {"detail": "Not Found"}, {}, RequestRejectedError, "Not Found"),
        (429, {"error": {"message": "slow down"}}, {"Retry-After": "3"}, RateLimitError, "slow down"),
        (
            500,
            {
                "object": "error",
                "message": "Internal server error: boom",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            },
            {},
            ServerError,
            "boom",
        ),
        (503, "", {}, ServerError, "failed"),
    ],
)
def test_error_bodies_in_every_sglang_shape_map_to_our_exceptions(
    status: int, body: Any, headers: dict[str, str], expected: type[BackendError], message: str
) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    error = error_from_response("POST /generate", status, text, headers)
    assert type(error) is expected
    assert error.status_code == status
    assert error.body == text
    assert message in str(error)
    if isinstance(error, RateLimitError):
        assert error.retry_after == 3.0


@pytest.mark.anyio
async def test_api_key_is_sent_and_a_missing_key_is_an_authentication_error(anyio_backend: str) -> None:
    async with FakeSGLangServer(api_key="sekret-key") as fake:
        async with SGLangNativeClient(fake.base_url) as anonymous:
            assert await anonymous.health()  # /health needs no key, as in SGLang
            with pytest.raises(AuthenticationError) as refused:
                await anonymous.generate_ids([3, 4], {"max_new_tokens": 2})
            assert refused.value.status_code == 401
        async with SGLangBackend.attach(
            fake.base_url, api_key="sekret-key", chat_backend=StubChat()
        ) as backend:
            [out] = await backend.generate_ids([3, 4], {"max_new_tokens": 2})
            assert out.completion_tokens > 0
            assert "sekret" not in repr(backend) and "sekret" not in repr(backend.native)
            assert "sekret" not in repr(backend.server)


@pytest.mark.anyio
async def test_malformed_generate_answers_raise_malformed_response_error(anyio_backend: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        # With logprobs: ids and logprobs disagree. Without: completion_tokens disagrees with the ids.
        with_logprobs = (await request.json())["return_logprob"]
        meta = {"prompt_tokens": 2, "completion_tokens": 3 if with_logprobs else 5}
        meta["output_token_logprobs"] = [[-0.1, 7, None]]
        return web.json_response({"text": "x", "output_ids": [7, 8, 9], "meta_info": meta})

    app = web.Application()
    app.router.add_post("/generate", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with SGLangNativeClient(f"http://127.0.0.1:{runner.addresses[0][1]}") as client:
            with pytest.raises(MalformedResponseError, match="name different tokens"):
                await client.generate_ids([1, 2])
            with pytest.raises(MalformedResponseError, match="completion_tokens=5"):
                await client.generate_ids([1, 2], return_logprob=False)
    finally:
        await runner.cleanup()


# -- weights and cache ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_update_weights_from_disk_is_sent_recorded_and_reported(
    backend: SGLangBackend, fake: FakeSGLangServer
) -> None:
    result = await backend.update_weights_from_disk(
        "/ckpt/step-10", load_format="safetensors", weight_version="step-10"
    )

    assert "Succeeded" in result.message
    assert result.num_paused_requests == 0
    assert fake.weight_updates == [
        {"model_path": "/ckpt/step-10", "load_format": "safetensors", "weight_version": "step-10"}
    ]
    info = await backend.get_model_info()
    assert (info["model_path"], info["weight_version"]) == ("/ckpt/step-10", "step-10")
    [out] = await backend.generate_ids([3, 4], {"max_new_tokens": 2})
    assert out.weight_version == "step-10"


@pytest.mark.anyio
async def test_a_failed_weight_update_raises_with_the_server_message(
    backend: SGLangBackend, fake: FakeSGLangServer
) -> None:
    fake.fail_weight_updates = True
    with pytest.raises(RequestRejectedError) as failed:
        await backend.update_weights_from_disk("/ckpt/broken", abort_all_requests=True)
    assert failed.value.status_code == 400
    assert "could not be loaded" in str(failed.value)
    assert json.loads(failed.value.body or "")["success"] is False
    assert fake.weight_updates == [{"model_path": "/ckpt/broken", "abort_all_requests": True}]
    assert fake.model_path == "fake/model"


@pytest.mark.anyio
async def test_update_weights_from_tensor_passes_the_payloads_through(
    backend: SGLangBackend, fake: FakeSGLangServer
) -> None:
    result = await backend.update_weights_from_tensor(["rank0-payload", "rank1-payload"], weight_version="v2")
    assert "Succeeded" in result.message
    assert fake.tensor_updates == [
        {
            "serialized_named_tensors": ["rank0-payload", "rank1-payload"],
            "flush_cache": True,
            "weight_version": "v2",
        }
    ]


@pytest.mark.anyio
async def test_flush_cache_is_called_and_a_busy_server_is_reported(
    backend: SGLangBackend, fake: FakeSGLangServer
) -> None:
    await backend.flush_cache()
    assert fake.flush_count == 1
    fake.flush_busy = True
    with pytest.raises(RequestRejectedError, match="no request is running or waiting"):
        await backend.flush_cache()
    assert fake.flush_count == 1


@pytest.mark.anyio
async def test_model_info_and_models(backend: SGLangBackend) -> None:
    info = await backend.get_model_info()
    assert info["is_generation"] is True
    assert await backend.native.list_models() == ["fake/model"]
    assert await backend.health()
    assert await backend.health(generate=True)


# -- the chat path --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_generate_goes_through_the_chat_backend_which_stays_the_callers(
    fake: FakeSGLangServer,
) -> None:
    stub = StubChat()
    request = GenerationRequest(messages=[{"role": "user", "content": "2+2?"}], n=2)
    async with SGLangBackend.attach(fake.base_url, chat_backend=stub) as backend:
        completions = await backend.generate(request)
    assert [c.content for c in completions] == ["answer 0", "answer 1"]
    assert stub.requests == [request]
    assert not stub.closed
    assert fake.generate_requests == 0
    async with SGLangNativeClient(fake.base_url) as client:
        assert await client.health()  # an attached server is never stopped by us


@pytest.mark.anyio
async def test_the_default_chat_backend_is_openai_compatible_on_v1(fake: FakeSGLangServer) -> None:
    openai_compat = pytest.importorskip("pacore_agent.backends.openai_compat")
    async with SGLangBackend.attach(fake.base_url, model="fake/model") as backend:
        chat = backend.chat_backend
        assert isinstance(chat, openai_compat.OpenAIBackend)
        assert chat.base_url == f"{fake.base_url}/v1"


@pytest.mark.anyio
async def test_fake_chat_completions_is_minimal_openai(anyio_backend: str) -> None:
    async with FakeSGLangServer(reasoning_parser="qwen3") as fake, aiohttp.ClientSession() as session:
        payload = {"model": "fake/model", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(f"{fake.base_url}/v1/chat/completions", json=payload) as response:
            body = await response.json()
    [choice] = body["choices"]
    assert choice["message"]["reasoning_content"]
    assert "\\boxed{" in choice["message"]["content"]
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


# -- attach mode ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_attach_waits_for_health_then_fails_clearly_when_nothing_answers(anyio_backend: str) -> None:
    async with FakeSGLangServer(startup_delay=0.6) as fake:
        started = time.monotonic()
        async with SGLangBackend.attach(
            f"{fake.base_url}/v1", chat_backend=StubChat(), timeout=10
        ) as backend:
            assert time.monotonic() - started >= 0.5
            assert backend.base_url == fake.base_url
        port = fake.port
    with pytest.raises(SGLangServerError) as unreachable:
        async with SGLangBackend.attach(f"http://127.0.0.1:{port}", timeout=0.5):
            pass
    assert isinstance(unreachable.value, EndpointConnectionError)
    assert f"127.0.0.1:{port}" in str(unreachable.value)
    assert "/health_generate" in str(unreachable.value)


@pytest.mark.anyio
async def test_an_attached_server_that_goes_away_is_a_connection_error_naming_it(anyio_backend: str) -> None:
    async with (
        FakeSGLangServer(die_after_requests=1) as fake,
        SGLangBackend.attach(fake.base_url, chat_backend=StubChat()) as backend,
    ):
        await backend.generate_ids([3, 4], {"max_new_tokens": 2})
        with pytest.raises(EndpointConnectionError) as dropped:
            await backend.generate_ids([3, 4], {"max_new_tokens": 2})
    assert not isinstance(dropped.value, SGLangServerError)
    assert fake.base_url in str(dropped.value)
    assert "POST /generate" in str(dropped.value)


# -- launch mode: the fake as a real subprocess ---------------------------------------------------


@pytest.mark.anyio
async def test_launch_serves_then_stops_the_whole_process_group(
    anyio_backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="pacore_agent.backends.sglang")
    log_path = tmp_path / "server.log"
    backend = _launch(
        "--startup-delay",
        "0.5",
        "--leak-child",
        "--mem-fraction-static",
        "0.8",
        tp_size=2,
        reasoning_parser="qwen3",
        api_key="sekret-key",
        log_path=log_path,
    )
    async with backend:
        server = backend.server
        assert server.launched and server.running and server.pid is not None
        pid = server.pid
        state = await _fake_state(backend.base_url)
        [child] = state["child_pids"]
        assert state["pid"] == pid
        assert sorted(group_members(pid)) == sorted([pid, child])

        [out] = await backend.generate_ids([3, 4, 5], {"max_new_tokens": 8})
        assert out.logprobs is not None and len(out.logprobs) == len(out.token_ids) == out.completion_tokens
        await backend.update_weights_from_disk("/ckpt/step-1")
        await backend.flush_cache()
        state = await _fake_state(backend.base_url)
        assert state["weight_updates"] == [{"model_path": "/ckpt/step-1"}]
        assert state["flush_count"] == 1

    assert server.returncode == 0  # stopped by SIGTERM, cleanly
    assert not running(child)  # the leftover worker got the group's signal too
    assert group_members(pid) == []
    log = log_path.read_text()
    assert "fired up and ready to roll" in log
    assert "--mem-fraction-static 0.8" in log  # SGLang's other arguments reach the command
    launch_lines = [r.getMessage() for r in caplog.records if "launching SGLang" in r.getMessage()]
    assert launch_lines and "--tp-size 2" in launch_lines[0] and "--reasoning-parser qwen3" in launch_lines[0]
    assert not any("sekret" in r.getMessage() for r in caplog.records)
    await backend.aclose()  # idempotent


@pytest.mark.anyio
async def test_a_server_that_dies_at_startup_is_reported_with_its_exit_code_and_log(
    anyio_backend: str,
) -> None:
    backend = _launch("--fail-startup", "3")
    with pytest.raises(SGLangServerError) as died:
        async with backend:
            pass
    error = died.value
    assert error.returncode == 3
    assert "exited with status 3 while starting up" in str(error)
    assert "simulated startup failure" in str(error)
    assert "simulated startup failure" in error.log_tail
    assert error.log_path == backend.server.log_path
    assert not error.retryable
    assert group_members(backend.server.pid or -1) == []
    # Without log_path, the log is a new temporary file, left for the user to read.
    assert error.log_path is not None and error.log_path.is_relative_to(tempfile.gettempdir())
    error.log_path.unlink()


@pytest.mark.anyio
async def test_a_server_that_dies_mid_run_is_reported_with_its_exit_code_and_log(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with _launch("--die-after-requests", "1", log_path=tmp_path / "server.log") as backend:
        await backend.generate_ids([3, 4], {"max_new_tokens": 4})
        with pytest.raises(SGLangServerError) as died:
            await backend.generate_ids([3, 4], {"max_new_tokens": 4})
        error = died.value
        assert isinstance(error, EndpointConnectionError)
        assert error.returncode == DIE_EXIT_CODE
        assert f"exited with status {DIE_EXIT_CODE} during POST /generate" in str(error)
        assert backend.base_url in str(error)
        assert "simulated crash" in error.log_tail
        assert not backend.server.running
        pid = backend.server.pid
    assert pid is not None and group_members(pid) == []


@pytest.mark.anyio
async def test_a_server_ignoring_sigterm_is_killed_with_its_children(
    anyio_backend: str, tmp_path: Path
) -> None:
    async with _launch(
        "--ignore-sigterm", "--leak-child", shutdown_timeout=1.0, log_path=tmp_path / "server.log"
    ) as backend:
        pid = backend.server.pid
        [child] = (await _fake_state(backend.base_url))["child_pids"]
    assert backend.server.returncode == -signal.SIGKILL
    assert not running(child)
    assert pid is not None and group_members(pid) == []


@pytest.mark.anyio
async def test_a_server_that_never_gets_healthy_times_out_and_is_stopped(
    anyio_backend: str, tmp_path: Path
) -> None:
    backend = _launch("--startup-delay", "60", startup_timeout=5.0, log_path=tmp_path / "server.log")
    with pytest.raises(SGLangServerError) as timed_out:
        async with backend:
            pass
    assert "did not answer /health_generate with 200 within 5s" in str(timed_out.value)
    assert "fake-sglang" in timed_out.value.log_tail  # the log tail is quoted
    assert backend.server.returncode is not None
    assert group_members(backend.server.pid or -1) == []


@pytest.mark.anyio
async def test_cancelling_a_launch_leaves_no_process_behind(anyio_backend: str, tmp_path: Path) -> None:
    backend = _launch("--startup-delay", "60", log_path=tmp_path / "server.log")
    with anyio.move_on_after(1.5) as scope:
        async with backend:
            pass
    assert scope.cancelled_caught
    assert backend.server.pid is not None
    assert backend.server.returncode is not None
    assert group_members(backend.server.pid) == []


@pytest.mark.anyio
async def test_a_missing_sglang_or_executable_is_explained(anyio_backend: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("sglang") is None:  # the real launcher, on a machine without SGLang
        with pytest.raises(SGLangServerError, match="SGLang is not installed for"):
            async with SGLangServer("m", startup_timeout=30, log_path=tmp_path / "a.log"):
                pass
    with pytest.raises(ConfigurationError, match="cannot run '/nonexistent/python'"):
        async with SGLangServer("m", python_executable="/nonexistent/python", log_path=tmp_path / "b.log"):
            pass


# -- configuration --------------------------------------------------------------------------------


def test_launch_command_is_built_from_the_settings() -> None:
    server = SGLangServer(
        "Qwen/Qwen3-8B",
        port=31000,
        tp_size=2,
        reasoning_parser="qwen3",
        served_model_name="pacore",
        api_key="sekret-key",
        extra_args=["--mem-fraction-static", "0.8"],
        python_executable="/opt/sglang/bin/python",
    )
    assert server.argv == (
        "/opt/sglang/bin/python", "-m", "sglang.launch_server",
        "--model-path", "Qwen/Qwen3-8B", "--host", "127.0.0.1", "--port", "31000",
        "--tp-size", "2", "--reasoning-parser", "qwen3", "--served-model-name", "pacore",
        "--api-key", "sekret-key", "--mem-fraction-static", "0.8",
    )  # fmt: skip
    assert server.base_url == "http://127.0.0.1:31000"
    assert "sekret" not in repr(server)
    assert SGLangServer("m", port=1).argv[:3] == (sys.executable, "-m", "sglang.launch_server")
    assert SGLangServer("m", command=["my-server"], port=1).argv[:2] == ("my-server", "--model-path")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"model_path": "m", "base_url": "http://127.0.0.1:1"},
        {"model_path": "m", "command": ["x"], "python_executable": "python"},
        {"model_path": "m", "command": "python -m x"},
        {"model_path": "m", "extra_args": "--flag"},
        {"model_path": "m", "tp_size": 0},
        {"model_path": "m", "port": 70000},
        {"base_url": "127.0.0.1:30000"},
    ],
)
def test_inconsistent_server_settings_are_usage_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        SGLangServer(**kwargs)
