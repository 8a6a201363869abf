"""Record a solve against the simulated server, replay it offline bit for bit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pacore_agent import (
    Coordinator,
    Faults,
    GenerationRequest,
    OpenAIBackend,
    RecordingBackend,
    ReplayBackend,
    ReplayMissError,
    RetryPolicy,
    RoundFailedError,
    SamplingParams,
    SimBackend,
    SimConfig,
    SimServer,
    SolveResult,
    UsageError,
)
from pacore_agent.backends.replay import canonical_request, request_key
from pacore_agent.exceptions import AuthenticationError, RateLimitError, ServerError
from tests.helpers import FakeSleep

pytestmark = pytest.mark.anyio

PROBLEM = "Let $x$ be the number of primes below 20. Find $x$."
TIMING = {"wall_s", "started_at", "latency_s"}


def _untimed(value: Any) -> Any:
    """A dumped result without its timing fields, which differ between any two runs."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _same(first: SolveResult, second: SolveResult) -> bool:
    return bool(_untimed(first.model_dump()) == _untimed(second.model_dump()))


def _miss(caught: pytest.ExceptionInfo[BaseException]) -> ReplayMissError:
    """The ReplayMissError raised through a solve, by its own class."""
    assert isinstance(caught.value, ReplayMissError)
    return caught.value


async def test_a_recorded_solve_replays_offline_to_the_same_result(tmp_path: Path) -> None:
    path = tmp_path / "run.replay.jsonl"
    async with SimServer(SimConfig(seed=3, split_reasoning=True)) as server:
        async with RecordingBackend(OpenAIBackend(server.base_url), path) as recorder:
            recorded = await Coordinator([4, 2], recorder, seed=5).solve(PROBLEM)
            assert recorder.recorded == 7 and recorder.name == "pacore-sim"
    # The server is gone: the replay needs nothing but the file.
    replay = ReplayBackend(path)
    assert replay.recorded == 7 and replay.name == "pacore-sim"
    replayed = await Coordinator([4, 2], replay, seed=5).solve(PROBLEM)
    assert _same(replayed, recorded)
    assert replayed.usage == recorded.usage and replayed.usage.reasoning_tokens > 0
    assert replay.remaining == 0

    with pytest.raises(ReplayMissError) as caught:
        await Coordinator([4, 2], ReplayBackend(path), seed=5).solve(PROBLEM + " Explain.")
    message = str(_miss(caught))
    assert f"'{PROBLEM} Explain.'" in message
    assert "holds 7 recorded requests" in message and str(path) in message


async def test_a_miss_names_the_request_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    request = GenerationRequest(
        [{"role": "user", "content": "What is 2+3?"}], sampling=SamplingParams(seed=1)
    )
    async with RecordingBackend(SimBackend(), path) as recorder:
        await recorder.generate(request)
    replay = ReplayBackend(path)
    changed = GenerationRequest(
        [{"role": "user", "content": "What is 2+4? " + "and more " * 20}], sampling=SamplingParams(seed=1)
    )
    with pytest.raises(ReplayMissError) as caught:
        await replay.generate(changed)
    message = str(caught.value)
    assert request_key(changed)[:12] in message
    assert "'What is 2+4? and more and more" in message and "...'" in message  # the first characters
    assert "holds 1 recorded requests (1 distinct)" in message
    # Sampling settings are part of the request: another seed is another request.
    with pytest.raises(ReplayMissError):
        await replay.generate(GenerationRequest(request.messages, sampling=SamplingParams(seed=2)))
    assert (await replay.generate(request))[0].content is not None


async def test_identical_requests_are_served_in_recorded_order(tmp_path: Path) -> None:
    path = tmp_path / "same.jsonl"
    request = GenerationRequest([{"role": "user", "content": PROBLEM}], n=2)
    async with RecordingBackend(SimBackend(SimConfig(seed=4)), path) as recorder:
        live = [await recorder.generate(request) for _ in range(3)]
    assert len({c.content for batch in live for c in batch}) > 1  # the live model varies
    replay = ReplayBackend(path)
    assert [await replay.generate(request) for _ in range(3)] == live
    with pytest.raises(ReplayMissError, match=r"all 3 recorded responses to request \w+ were already served"):
        await replay.generate(request)


async def test_recorded_errors_are_raised_again_as_the_same_class(tmp_path: Path) -> None:
    path = tmp_path / "faults.jsonl"
    config = SimConfig(
        seed=2, faults=Faults(script=["rate_limit", "server_error", None, "bad_request"], retry_after=3)
    )
    policy = RetryPolicy(max_attempts=3, sleep=FakeSleep())
    async with RecordingBackend(SimBackend(config), path) as recorder:
        recorded = await Coordinator([2], recorder, retry=policy).solve(PROBLEM)
    first = recorded.rounds[0].trajectories
    assert sorted(t.status for t in first) == ["failed", "ok"]  # a 429 then a 200; a 500 then a 400
    assert [t.attempts for t in first] == [2, 2]

    replayed = await Coordinator(
        [2], ReplayBackend(path), retry=RetryPolicy(max_attempts=3, sleep=FakeSleep())
    ).solve(PROBLEM)
    assert _same(replayed, recorded)

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    errors = [line for line in lines if "error" in line]
    assert [e["error"]["type"] for e in errors][:2] == ["RateLimitError", "ServerError"]
    # Directly: the same class, with its fields.
    replay = ReplayBackend(path)
    request = GenerationRequest([{"role": "user", "content": PROBLEM}])
    with pytest.raises(RateLimitError) as rate_limited:
        await replay.generate(request)
    assert rate_limited.value.retry_after == 3 and rate_limited.value.status_code == 429
    with pytest.raises(ServerError) as server_error:
        await replay.generate(request)
    assert str(server_error.value) == "sim answered 500: Internal server error (simulated) (HTTP 500)"


async def test_a_failed_round_replays_too(tmp_path: Path) -> None:
    path = tmp_path / "failed.jsonl"
    config = SimConfig(faults=Faults(script=["bad_request"]))
    async with RecordingBackend(SimBackend(config), path) as recorder:
        with pytest.raises(RoundFailedError) as live:
            await Coordinator([1], recorder, retry=RetryPolicy(max_attempts=1)).solve(PROBLEM)
        second = await Coordinator([1], recorder, retry=RetryPolicy(max_attempts=1)).solve(PROBLEM + " (2)")
    replay = ReplayBackend(path)
    with pytest.raises(RoundFailedError) as again:
        await Coordinator([1], replay, retry=RetryPolicy(max_attempts=1)).solve(PROBLEM)
    assert _same(again.value.partial, live.value.partial)
    assert _same(await Coordinator([1], replay).solve(PROBLEM + " (2)"), second)


async def test_no_api_key_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    secret = "sk-never-in-the-file-123"
    async with SimServer(SimConfig(), api_key=secret) as server:
        async with RecordingBackend(OpenAIBackend(server.base_url, api_key=secret), path) as recorder:
            await Coordinator([2], recorder).solve(PROBLEM)
            sampling = SamplingParams(extra_body={"api_key": secret, "nested": {"Authorization": secret}})
            await Coordinator([1], recorder, sampling=sampling).solve(PROBLEM)
        async with RecordingBackend(
            OpenAIBackend(server.base_url, "pacore-sim", api_key="wrong"), path
        ) as bad:
            with pytest.raises(AuthenticationError):
                await bad.generate(GenerationRequest([{"role": "user", "content": PROBLEM}]))
    text = path.read_text()
    assert secret not in text and "wrong" not in text
    assert '"AuthenticationError"' in text and "<redacted>" in text
    # Redaction is part of the key: the recorded request with a secret replays.
    assert canonical_request(GenerationRequest([], sampling=sampling))["sampling"]["extra_body"] == {
        "api_key": "<redacted>",
        "nested": {"Authorization": "<redacted>"},
    }


async def test_streamed_events_replay(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    async with RecordingBackend(SimBackend(SimConfig(seed=6)), path) as recorder:
        live = [e async for e in Coordinator([2], recorder).stream(PROBLEM)]
    events = [e async for e in Coordinator([2], ReplayBackend(path)).stream(PROBLEM)]
    tokens = "".join(e.text for e in events if e.kind == "token" and e.field == "content")  # type: ignore[union-attr]
    assert tokens == events[-1].result.final.content  # type: ignore[union-attr]
    assert _same(events[-1].result, live[-1].result)  # type: ignore[union-attr]


async def test_files_append_and_survive_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    first = GenerationRequest([{"role": "user", "content": "first"}])
    second = GenerationRequest([{"role": "user", "content": "second"}])
    async with RecordingBackend(SimBackend(), path) as recorder:
        await recorder.generate(first)
        await recorder.generate(first)
    with path.open("a") as file:
        file.write('{"key": "abc", "seq": 0, "requ')  # a crash mid-write
    assert ReplayBackend(path).recorded == 2
    async with RecordingBackend(SimBackend(SimConfig(seed=1)), path) as recorder:
        again = await recorder.generate(first)  # a new session: served after the first session's two
        await recorder.generate(second)
    replay = ReplayBackend(path)
    assert replay.recorded == 4
    await replay.generate(first)
    await replay.generate(first)
    assert await replay.generate(first) == again
    assert sum(1 for line in path.read_text().splitlines() if '"format": "pacore-replay"' in line) == 2

    broken = tmp_path / "broken.jsonl"
    broken.write_text('not json\n{"format": "pacore-replay", "version": 1}\n')
    with pytest.raises(UsageError, match=r"broken.jsonl:1: not a replay record"):
        ReplayBackend(broken)
    with pytest.raises(UsageError, match="no replay file"):
        ReplayBackend(tmp_path / "missing.jsonl")


async def test_the_recorder_delegates_to_the_wrapped_backend(tmp_path: Path) -> None:
    from pacore_agent.backends.replay import _safe_name

    assert _safe_name("https://user:sk-1@example.com:8443/v1?api-key=sk-2") == "https://example.com:8443/v1"
    assert _safe_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    inner = SimBackend(max_concurrency=3)
    recorder = RecordingBackend(inner, tmp_path / "d.jsonl")
    assert recorder.limiter is inner.limiter and recorder.max_concurrency == 3
    assert recorder.name == "pacore-sim" and recorder.engine is inner.engine
    assert "RecordingBackend(SimBackend" in repr(recorder)
    await recorder.aclose()
    with pytest.raises(UsageError, match="closed"):
        await recorder.generate(GenerationRequest([{"role": "user", "content": "x"}]))
