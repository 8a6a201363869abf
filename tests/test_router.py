"""A REAL SGLang router (``sglang-router``) in front of several workers: simulated ones (``pacore
sim-server`` processes) and fake SGLang servers for the native API. Solve and bench through it, a worker
killed mid-run, start failures, and the simulated worker's capacity, prefix cache and counters."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
from collections import Counter
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from pacore_agent import OpenAIBackend
from pacore_agent.backends.base import GenerationRequest
from pacore_agent.backends.sglang import SGLangBackend, SGLangNativeClient, SGLangServer, SGLangServerError
from pacore_agent.backends.sglang.router import SGLangRouter
from pacore_agent.backends.sim import SimConfig
from pacore_agent.backends.sim_server import SimServer
from pacore_agent.backends.sim_worker import DecodeSlots, PrefixCache
from pacore_agent.evaluation.bench import BenchSettings, parse_methods, run_bench
from pacore_agent.evaluation.datasets import Problem
from pacore_agent.evaluation.store import RunStore
from pacore_agent.exceptions import AuthenticationError, UsageError
from pacore_agent.testing.sim_workers import SimWorkerProcess, sim_workers
from tests.helpers import PACORE, closed_port
from tests.processes import FAKE_COMMAND, FAKE_ENV

pytestmark = pytest.mark.anyio
# The router tests start real processes (seconds each); the simulated worker's parts need neither.
requires_router = pytest.mark.skipif(
    importlib.util.find_spec("sglang_router") is None,
    reason="sglang-router is not installed (pip install 'pacore[router]')",
)

# The router's fastest settings: health probes every second, one failure takes a worker out.
FAST = {"health_check_interval": 1, "health_failure_threshold": 1}


def _problems(count: int) -> list[Problem]:
    return [Problem(id=f"p{i}", problem=f"Compute {i} + {i}.", answer=str(2 * i)) for i in range(count)]


@pytest.mark.slow
@requires_router
async def test_solve_and_bench_through_the_router(tmp_path: Path) -> None:
    async with (
        sim_workers(2, "--capacity", "4", "--prefix-cache", env=FAKE_ENV) as workers,
        SGLangRouter([w.base_url for w in workers], **FAST) as router,
    ):
        assert {w["url"] for w in await router.workers()} == {w.base_url for w in workers}

        # The command line, unchanged: the router's URL is the endpoint.
        solved = await anyio.run_process(
            [*PACORE, "solve", "--base-url", f"{router.base_url}/v1", "--schedule", "4,4", "--json", "x+1?"],
            env={**os.environ, **FAKE_ENV},
            check=False,
        )
        assert solved.returncode == 0, solved.stderr.decode()[-2000:]
        assert b'"answer"' in solved.stdout
        stats = [await w.stats() for w in workers]
        assert sum(s["served"] for s in stats) == 4 + 4 + 1
        # The synthesis round's prompts share P(x, M): cache-aware routing keeps them on one worker,
        # whose prefix cache then serves them.
        rounds = [key for s in stats for key in s["synthesis"]]
        assert len(rounds) == len(set(rounds)) == 2  # each synthesis round on one worker only
        assert sorted(n for s in stats for n in s["synthesis"].values()) == [1, 4]
        assert sum(s["cached_tokens"] for s in stats) > 0

        # A short bench through the router, every sample recorded once.
        settings = BenchSettings("mini", parse_methods(["pacore:[2,2]", "single"]), samples=2)
        async with OpenAIBackend(f"{router.base_url}/v1", max_concurrency=16) as backend:
            summary = await run_bench(settings, _problems(4), backend, tmp_path / "run")
        assert summary.complete and summary.recorded == 16 and not summary.failed
        keys = Counter(r.key for r in RunStore.open(tmp_path / "run", readonly=True).records())
        assert len(keys) == 16 and set(keys.values()) == {1}


@pytest.mark.slow
@requires_router
@pytest.mark.parametrize("policy", ["round_robin", "cache_aware"])
async def test_a_worker_killed_mid_bench_loses_and_duplicates_nothing(policy: str, tmp_path: Path) -> None:
    # Enough latency that the bench is surely running when a worker dies under it.
    options = ("--capacity", "2", "--latency-median", "0.05")
    async with (
        sim_workers(2, *options, env=FAKE_ENV) as workers,
        SGLangRouter([w.base_url for w in workers], policy=policy, **FAST) as router,  # type: ignore[arg-type]
    ):
        settings = BenchSettings("mini", parse_methods(["pacore:[2,2]"]), samples=3, max_in_flight=6)
        problems = _problems(6)
        async with OpenAIBackend(f"{router.base_url}/v1", max_concurrency=8) as backend:
            async with anyio.create_task_group() as group:
                result: list[object] = []

                async def bench() -> None:
                    result.append(await run_bench(settings, problems, backend, tmp_path / "run"))

                group.start_soon(bench)
                with anyio.fail_after(60):
                    while (await workers[0].stats())["served"] < 5:
                        await anyio.sleep(0.05)
                served_before = (await workers[1].stats())["served"]
                workers[0].kill()
        (summary,) = result
        assert summary.complete and summary.recorded == 18 and not summary.failed  # type: ignore[attr-defined]
        # The run went on on the surviving worker.
        assert (await workers[1].stats())["served"] > served_before
        assert await workers[0].wait_exited(5) is not None
    records = list(RunStore.open(tmp_path / "run", readonly=True).records())
    keys = Counter(r.key for r in records)
    assert len(keys) == 18 and set(keys.values()) == {1}  # every sample exactly once
    assert all(r.result.final is not None for r in records)


@pytest.mark.slow
@requires_router
async def test_sglang_backend_attached_to_the_router_chats_and_generates() -> None:
    async with (
        SGLangServer("m", command=FAKE_COMMAND, env=FAKE_ENV, health_generate=False) as one,
        SGLangServer("m", command=FAKE_COMMAND, env=FAKE_ENV, health_generate=False) as two,
        SGLangRouter([one.base_url, two.base_url], policy="round_robin", **FAST) as router,
        SGLangBackend.attach(router.base_url) as backend,  # health-checked on /health_generate
    ):
        info = await backend.get_model_info()
        assert info["model_path"] == "m"
        (chat,) = await backend.generate(GenerationRequest(messages=[{"role": "user", "content": "hi"}]))
        assert "answer" in chat.content.lower()
        # The native /generate of training rollouts, token ids in and out, through the router.
        outs = [await backend.generate_ids([5, 6, 7], {"max_new_tokens": 4}) for _ in range(4)]
        for (out,) in outs:
            assert out.prompt_tokens == 3 and 1 <= len(out.token_ids) <= 4
            assert len(out.logprobs) == len(out.token_ids)
        counts = []
        for worker in (one, two):
            async with SGLangNativeClient(worker.base_url) as client:
                counts.append((await client.get_json("/_fake/state"))["generate_requests"])
        assert sorted(counts) == [2, 2]  # round robin: both workers generated
        await backend.flush_cache()  # the router passes it on


@pytest.mark.slow
@requires_router
async def test_an_api_key_is_required_by_the_router_and_passed_to_the_workers() -> None:
    key = "sk-router-secret"
    async with (
        sim_workers(2, "--api-key", key, env=FAKE_ENV) as workers,
        SGLangRouter([w.base_url for w in workers], api_key=key, **FAST) as router,
    ):
        request = GenerationRequest(messages=[{"role": "user", "content": "hi"}])
        async with OpenAIBackend(f"{router.base_url}/v1", api_key=key) as backend:
            (answer,) = await backend.generate(request)
        assert answer.content
        async with OpenAIBackend(f"{router.base_url}/v1", api_key="wrong") as backend:
            with pytest.raises(AuthenticationError):
                await backend.generate(request)
        assert key not in router.log_tail(1000) and key not in repr(router)


@pytest.mark.slow
@requires_router
async def test_router_start_failures_are_clear(tmp_path: Path) -> None:
    async with sim_workers(1, env=FAKE_ENV) as (worker,):
        # A port already taken: the router exits, and the error says so.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            router = SGLangRouter([worker.base_url], port=port, **FAST)
            with pytest.raises(SGLangServerError, match=rf"port {port} on 127.0.0.1 is already in use"):
                await router.start()
            assert router.pid is None  # nothing was launched

        # No healthy worker: a clear list of what was wrong, and the router is stopped.
        dead = f"http://127.0.0.1:{closed_port()}"
        router = SGLangRouter([worker.base_url, dead], startup_timeout=6, **FAST)
        with pytest.raises(SGLangServerError, match="did not see all of its 2 workers healthy") as info:
            await router.start()
        assert f"{dead} not registered (unreachable" in str(info.value)
        assert router.returncode is not None  # stopped, not left running

    # A worker with bad options: its own one-line error, quoted from its log.
    bad = SimWorkerProcess("--capacity", "0", env=FAKE_ENV)
    with pytest.raises(SGLangServerError, match=r"simulated SGLang worker .* exited") as info:
        await bad.start()
    assert "capacity must be at least 1" in info.value.log_tail

    with pytest.raises(UsageError, match="worker_urls"):
        SGLangRouter([])
    with pytest.raises(UsageError, match="unknown router policy"):
        SGLangRouter(["http://127.0.0.1:1"], policy="fastest")  # type: ignore[arg-type]


# -- the simulated worker's parts, in-process ----------------------------------------------------


async def test_sim_worker_answers_the_router_polls_and_counts() -> None:
    async with (
        SimServer(SimConfig(think_words=4), capacity=2, prefix_cache=True, worker_name="w7") as server,
        SGLangBackend.attach(server.root_url, health_generate=False) as backend,
    ):
        assert (await backend.get_model_info())["model_path"] == "pacore-sim"
        long = " ".join(f"w{i}" for i in range(64))
        first = await backend.generate(GenerationRequest(messages=[{"role": "user", "content": long}]))
        second = await backend.generate(
            GenerationRequest(messages=[{"role": "user", "content": long + " and more words"}])
        )
        assert first[0].usage.cached_tokens == 0
        assert second[0].usage.cached_tokens == 64  # the shared prefix, in whole blocks
        stats = server.stats()
        assert (stats["worker"], stats["served"], stats["arrived"]) == ("w7", 2, 2)
        assert stats["cached_tokens"] == 64 and stats["capacity"] == 2


async def test_decode_slots_queue_in_arrival_order() -> None:
    slots = DecodeSlots(2)
    order: list[str] = []
    release = asyncio.Event()

    async def run(name: str, n: int) -> None:
        async with slots.hold(n):
            order.append(name)
            await release.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(run, "a", 1)
        await anyio.lowlevel.checkpoint()
        group.start_soon(run, "b", 2)  # needs both slots: waits for a
        await anyio.lowlevel.checkpoint()
        group.start_soon(run, "c", 1)  # fits now, but b came first
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert order == ["a"] and slots.queued == 2 and slots.busy == 1
        release.set()
    assert order == ["a", "b", "c"] and slots.max_busy == 2 and slots.busy == 0
    with pytest.raises(UsageError, match="capacity"):
        DecodeSlots(0)


def test_prefix_cache_matches_whole_blocks_and_whole_prompts() -> None:
    cache = PrefixCache(block=4)
    words = [{"role": "user", "content": "a b c d e f g h i"}]
    assert cache.lookup_and_insert(words) == 0
    assert cache.lookup_and_insert(words) == 10  # role header + 9 words, all seen
    other = [{"role": "user", "content": "a b c d e f X"}]
    assert cache.lookup_and_insert(other) == 4
    assert cache.lookup_and_insert([{"role": "system", "content": "a b c"}]) == 0
    cache.clear()
    assert len(cache) == 0
