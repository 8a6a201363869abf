"""The Coordinator over real HTTP: the simulated server on loopback and the OpenAI SDK client."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import anyio
import jinja2
import pytest

from pacore_agent import Coordinator, Faults, Latency, OpenAIBackend, RetryPolicy, SimConfig, SimServer
from pacore_agent.backends.base import SamplingParams
from pacore_agent.backends.env import backend_from_env
from pacore_agent.backends.sim import SimEngine
from pacore_agent.exceptions import ConfigurationError, RoundFailedError, UsageError
from pacore_agent.ordering import round_rng
from pacore_agent.results import SolveResult, Usage
from tests.helpers import FakeSleep, closed_port, served_sim, wait_until

pytestmark = pytest.mark.anyio

PROBLEM = "Let $x$ be the number of primes below 20. Find $x$."


def _references(body: dict[str, object]) -> int:
    messages = body["messages"]
    assert isinstance(messages, list)
    return len(re.findall(r"\nReference \d+:\n", str(messages[-1]["content"])))


async def test_rounds_of_32_4_1_and_references_sent() -> None:
    async with served_sim() as (server, backend):
        coordinator = Coordinator([32, 4], backend)
        assert coordinator.rounds == [32, 4, 1]
        result = await coordinator.solve(PROBLEM)
    assert [len(r.trajectories) for r in result.rounds] == [32, 4, 1]
    assert result.schedule == [32, 4, 1]
    bodies = server.engine.requests
    assert len(bodies) == 37
    assert [_references(b) for b in bodies[:32]] == [0] * 32
    assert [_references(b) for b in bodies[32:36]] == [32] * 4
    assert _references(bodies[36]) == 4
    assert result.answer is not None and "\\boxed{" in result.answer
    assert result.final is not None and result.answer == result.final.content.split("</think>")[-1]  # type: ignore[union-attr]


async def test_synthesis_body_is_byte_identical_to_the_template(shared_dir) -> None:  # type: ignore[no-untyped-def]
    template = jinja2.Template((shared_dir / "docs" / "synthesis_template.txt").read_text(encoding="utf-8"))
    async with served_sim() as (server, backend):
        result = await Coordinator([6], backend, seed=11).solve(PROBLEM)
    first, final = result.rounds
    assert len(first.messages) == 6
    assert first.messages == [first.trajectories[i].message for i in first.order]
    # The bypass: round 1 sends the conversation unchanged.
    assert server.engine.requests[0]["messages"] == [{"role": "user", "content": PROBLEM}]
    expected = template.render(original_prompt=PROBLEM, ref_responses=first.messages)
    assert server.engine.requests[6]["messages"] == [{"role": "user", "content": expected}]
    # Messages are C(trajectory): the text after the last </think>, unstripped.
    for trajectory in first.trajectories:
        assert trajectory.message == trajectory.content.rsplit("</think>", 1)[1]  # type: ignore[union-attr]
    assert final.trajectories[0].round == 1


async def test_default_order_is_seeded_per_problem_and_round() -> None:
    async with served_sim() as (_, backend):
        result = await Coordinator([5], backend, seed=4).solve(PROBLEM)
    from pacore_agent.coordinator import problem_key

    expected = list(range(5))
    round_rng(4, problem_key(result.problem), 0).shuffle(expected)
    assert result.rounds[0].order == expected
    assert result.order_policy == "seeded"


async def test_multi_turn_history_is_kept() -> None:
    history = [
        {"role": "system", "content": "You are a careful mathematician."},
        {"role": "user", "content": "Warm-up: what is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": PROBLEM},
    ]
    async with served_sim() as (server, backend):
        await Coordinator([2], backend).solve(history)
    synthesis = server.engine.requests[2]["messages"]
    assert synthesis[:3] == history[:3]
    assert synthesis[3]["content"].startswith("You are given a problem")
    assert f"Original Problem:\n{PROBLEM}\n" in synthesis[3]["content"]


async def test_failed_trajectory_is_recorded_and_left_out() -> None:
    config = SimConfig(seed=2, faults=Faults(script=[None, None, "server_error"]))
    async with served_sim(config) as (_, backend):
        result = await Coordinator([4], backend, retry=RetryPolicy(max_attempts=1)).solve(PROBLEM)
    first = result.rounds[0]
    failed = [t for t in first.trajectories if t.status == "failed"]
    assert len(failed) == 1
    assert failed[0].error is not None and failed[0].error.status_code == 500
    assert failed[0].index not in first.order
    assert len(first.messages) == 3


async def test_retries_by_error_class_with_injected_sleep() -> None:
    sleep = FakeSleep()
    policy = RetryPolicy(max_attempts=4, sleep=sleep, initial_backoff=2.0)
    config = SimConfig(
        seed=2, faults=Faults(script=["rate_limit", "server_error", "unavailable"], retry_after=7)
    )
    async with served_sim(config) as (_, backend):
        result = await Coordinator([1], backend, retry=policy).solve(PROBLEM)
    first = result.rounds[0].trajectories[0]
    assert first.ok and first.attempts == 4
    assert sleep.calls[0] == 7.0  # Retry-After honoured exactly
    assert 2.0 <= sleep.calls[1] <= 4.0 and 4.0 <= sleep.calls[2] <= 8.0  # exponential, jittered
    assert result.calls == 5


async def test_bad_request_is_not_retried() -> None:
    sleep = FakeSleep()
    config = SimConfig(faults=Faults(script=["bad_request"]))
    async with served_sim(config) as (server, backend):
        with pytest.raises(RoundFailedError) as caught:
            await Coordinator([1], backend, retry=RetryPolicy(sleep=sleep)).solve(PROBLEM)
    assert sleep.calls == []
    assert len(server.engine.requests) == 1
    trajectory = caught.value.partial.rounds[0].trajectories[0]
    assert trajectory.error is not None and trajectory.error.type == "RequestRejectedError"
    assert trajectory.attempts == 1


async def test_context_length_error_retried_once_with_smaller_max_tokens() -> None:
    config = SimConfig(context_window=500)
    async with served_sim(config) as (server, backend):
        sampling = SamplingParams(max_tokens=2000)
        result = await Coordinator(
            [1], backend, sampling=sampling, retry=RetryPolicy(sleep=FakeSleep())
        ).solve(PROBLEM)
    sent = [body["max_tokens"] for body in server.engine.requests]
    prompt_tokens = len(PROBLEM.split())
    assert sent[:2] == [2000, 500 - prompt_tokens - 16]
    assert result.rounds[0].trajectories[0].attempts == 2


async def test_endpoint_never_sees_more_than_the_limit() -> None:
    limit = 3
    engine = SimEngine(SimConfig(latency=Latency(median=1.0)))
    full = asyncio.Event()

    async def hold_until_full(_: float) -> None:
        # Each answer waits until the limit's worth of requests is in flight (bounded, in case of a bug),
        # so the test proves the limit is reached and never passed.
        if engine.in_flight >= limit:
            full.set()
        with anyio.move_on_after(5):
            await full.wait()

    async with (
        SimServer(engine, sleep=hold_until_full) as server,
        OpenAIBackend(server.base_url, max_concurrency=limit) as backend,
    ):
        results = await Coordinator([6], backend).solve_many([f"{PROBLEM} ({i})" for i in range(4)])
    assert all(isinstance(r, SolveResult) for r in results)
    assert engine.max_in_flight == limit


async def test_cancelling_a_solve_cancels_every_request() -> None:
    config = SimConfig(latency=Latency(stall_probability=1.0))
    async with served_sim(config) as (server, backend):
        before = set(asyncio.all_tasks())
        async with anyio.create_task_group() as group:
            group.start_soon(Coordinator([8], backend).solve, PROBLEM)
            await wait_until(lambda: server.engine.in_flight == 8)
            group.cancel_scope.cancel()
        await wait_until(lambda: server.engine.disconnects == 8)
        await wait_until(lambda: set(asyncio.all_tasks()) <= before)
    assert server.engine.served == 0


async def test_usage_totals_equal_what_the_server_reported() -> None:
    async with served_sim(SimConfig(seed=5, split_reasoning=True)) as (server, backend):
        result = await Coordinator("high", backend).solve(PROBLEM)
    assert result.usage == server.engine.usage_served
    assert result.usage.reasoning_tokens > 0 and result.usage.cached_tokens > 0
    assert result.ttc_tokens == sum(t.usage.completion_tokens for t in result.trajectories)
    assert result.calls == 37


async def test_result_round_trips_through_json() -> None:
    async with served_sim(SimConfig(split_reasoning=True)) as (_, backend):
        result = await Coordinator([3], backend).solve(PROBLEM)
    restored = SolveResult.model_validate_json(result.model_dump_json())
    assert restored == result
    assert (
        json.loads(result.model_dump_json())["usage"]["completion_tokens"] == result.usage.completion_tokens
    )


async def test_n_per_request_uses_n_where_honoured() -> None:
    async with served_sim(SimConfig(seed=1)) as (server, backend):
        result = await Coordinator([8], backend, n_per_request=4).solve(PROBLEM)
    assert [b.get("n") for b in server.engine.requests] == [4, 4, None]
    assert len(result.rounds[0].trajectories) == 8
    assert len({t.content for t in result.rounds[0].trajectories}) > 1
    assert result.usage == server.engine.usage_served
    assert result.calls == 3 and backend.supports_n is True


async def test_server_ignoring_n_is_detected() -> None:
    async with served_sim(SimConfig(seed=1, honour_n=False)) as (server, backend):
        result = await Coordinator([4], backend, n_per_request=4).solve(PROBLEM)
    assert backend.supports_n is False
    assert len(result.rounds[0].trajectories) == 4
    assert all(t.ok for t in result.rounds[0].trajectories)
    assert [b.get("n") for b in server.engine.requests[:4]] == [4, None, None, None]
    assert result.usage == server.engine.usage_served


async def test_streaming_backend_collects_the_same_answers() -> None:
    config = SimConfig(seed=9, split_reasoning=True)
    sampling = SamplingParams(seed=123)
    async with served_sim(config) as (_, plain):
        expected = await Coordinator([3], plain, sampling=sampling).solve(PROBLEM)
    async with served_sim(config, stream=True) as (_, streaming):
        streamed = await Coordinator([3], streaming, sampling=sampling).solve(PROBLEM)
    assert streamed.answer == expected.answer
    assert [t.content for t in streamed.trajectories] == [t.content for t in expected.trajectories]
    assert [t.reasoning for t in streamed.trajectories] == [t.reasoning for t in expected.trajectories]
    assert streamed.usage == expected.usage


async def test_events_arrive_in_order_and_add_up() -> None:
    async with served_sim(SimConfig(seed=4)) as (_, backend):
        events = [event async for event in Coordinator([3, 2], backend).stream(PROBLEM)]
    kinds = [e.kind for e in events]
    assert kinds[0] == "round_started" and kinds[-1] == "done"
    assert kinds.count("round_started") == kinds.count("round_finished") == 3
    assert kinds.count("trajectory_finished") == 6
    assert (
        "token"
        in kinds[
            kinds.index("round_started", kinds.index("round_finished", kinds.index("round_finished") + 1)) :
        ]
    )
    done = events[-1].result  # type: ignore[union-attr]
    finished = [e.trajectory for e in events if e.kind == "trajectory_finished"]  # type: ignore[union-attr]
    assert Usage.sum([t.usage for t in finished]) == done.usage
    tokens = "".join(e.text for e in events if e.kind == "token" and e.field == "content")  # type: ignore[union-attr]
    assert tokens == done.final.content


async def test_unreachable_endpoint_is_a_clear_error() -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{closed_port()}/v1", "m")
    async with backend:
        with pytest.raises(RoundFailedError, match=r"could not talk to http://127\.0\.0\.1"):
            await Coordinator([2], backend, retry=RetryPolicy(max_attempts=2, sleep=FakeSleep())).solve(
                PROBLEM
            )


async def test_malformed_json_is_a_clear_error() -> None:
    config = SimConfig(faults=Faults(rates={"malformed": 1.0}))
    async with served_sim(config) as (_, backend):
        with pytest.raises(RoundFailedError, match="malformed response") as caught:
            await Coordinator([2], backend, retry=RetryPolicy(max_attempts=2, sleep=FakeSleep())).solve(
                PROBLEM
            )
    assert caught.value.partial.rounds[0].trajectories[0].attempts == 2


async def test_dropped_connection_is_retried() -> None:
    config = SimConfig(faults=Faults(script=["drop"]))
    async with served_sim(config) as (_, backend):
        result = await Coordinator([1], backend, retry=RetryPolicy(sleep=FakeSleep())).solve(PROBLEM)
    assert result.rounds[0].trajectories[0].attempts == 2


async def test_api_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-very-secret-123456"
    async with SimServer(SimConfig(), api_key="the-right-key") as server:
        async with OpenAIBackend(server.base_url, api_key=secret) as backend:
            coordinator = Coordinator([2], backend, retry=RetryPolicy(max_attempts=1))
            with pytest.raises(RoundFailedError) as caught:
                await coordinator.solve(PROBLEM)
            texts = [
                repr(backend),
                repr(coordinator),
                str(caught.value),
                caught.value.partial.model_dump_json(),
                caplog.text,
            ]
        async with OpenAIBackend(server.base_url, api_key="the-right-key") as good:
            result = await Coordinator([2], good).solve(PROBLEM)
            texts += [repr(good), result.model_dump_json()]
    assert "AuthenticationError" in caught.value.partial.model_dump_json()
    assert all(secret not in text and "the-right-key" not in text for text in texts)


async def test_model_is_the_endpoints_only_model() -> None:
    async with served_sim() as (_, backend):
        assert await backend.resolve_model() == "pacore-sim"


async def test_backend_from_the_environment() -> None:
    with pytest.raises(ConfigurationError, match="PACORE_BASE_URL"):
        backend_from_env({})
    with pytest.raises(ConfigurationError, match="API key missing"):
        backend_from_env({"PACORE_BASE_URL": "https://api.example.com/v1"})
    with pytest.raises(ConfigurationError, match="PACORE_BASE_URL"):
        Coordinator([2])
    async with SimServer() as server:
        async with backend_from_env({"PACORE_BASE_URL": server.base_url}) as backend:
            result = await Coordinator([2], backend).solve(PROBLEM)
        assert result.final is not None and result.final.model == "pacore-sim"
    hosted = backend_from_env({"OPENAI_API_KEY": "sk-x", "PACORE_MODEL": "gpt-5"})
    assert hosted.base_url == "https://api.openai.com/v1" and hosted.model == "gpt-5"
    assert "sk-x" not in repr(hosted)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schedule": []}, "empty"),
        ({"schedule": [0]}, "positive"),
        ({"schedule": "ultra"}, "unknown schedule"),
        ({"schedule": [10_000]}, "safety cap"),
        ({"schedule": [4], "n_per_request": 0}, "n_per_request"),
        ({"schedule": [4], "order": "random"}, "unknown reference order"),
    ],
)
async def test_bad_coordinator_options(options: dict[str, object], message: str) -> None:
    async with served_sim() as (_, backend):
        with pytest.raises(UsageError, match=message):
            Coordinator(backend=backend, **options)  # type: ignore[arg-type]


async def test_bad_problems_fail_before_any_request() -> None:
    async with served_sim() as (server, backend):
        coordinator = Coordinator([2], backend)
        for problem in ("", [], [{"role": "assistant", "content": "hi"}]):
            with pytest.raises(UsageError):
                await coordinator.solve(problem)  # type: ignore[arg-type]
        with pytest.raises(UsageError):
            await coordinator.solve_many([PROBLEM, ""])
    assert server.engine.requests == []


async def test_solve_many_keeps_finished_work_when_one_fails() -> None:
    config = SimConfig(faults=Faults(script=["bad_request"]))
    async with served_sim(config) as (_, backend):
        coordinator = Coordinator([1], backend, retry=RetryPolicy(max_attempts=1))
        results = await coordinator.solve_many([f"{PROBLEM} #{i}" for i in range(3)], max_in_flight=1)
    assert isinstance(results[0], RoundFailedError)
    assert all(isinstance(r, SolveResult) and r.answer for r in results[1:])


async def test_hosted_endpoint_without_a_key_is_refused_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="API key missing for the hosted endpoint"):
        OpenAIBackend("https://api.example.com/v1", "m")
    local = OpenAIBackend("http://127.0.0.1:1/v1", "m")  # local servers need no key
    assert "EMPTY" not in repr(local)
