"""What ``pacore serve`` adds in front of an endpoint: latency, requests/s, streamed chunks/s.

A simulated server (zero latency) and ``pacore serve`` in front of it run in processes of their own;
this process is the client (raw aiohttp, so the client's own cost stays small):

- added latency: one ``pacore-low`` request at a time through the server, alternating with the same
  rounds solved directly (a `Coordinator` with ``pacore-low``'s schedule against the simulated
  server); the difference of their p50 and of their p99;
- requests/s with 64 clients at once asking for ``pacore-low``;
- streamed chunks/s: the same 64 clients with ``stream: true``, every SSE ``data:`` event counted.

    python -m benchmarks.serve [--sequential 100] [--clients 64] [--requests 640]

Last line: ``serve_added_p50_ms=... serve_added_p99_ms=... serve_rps=... serve_stream_cps=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import aiohttp

from benchmarks import _args
from benchmarks._sim import pacore_process, sim_server_process, wait_healthy
from pacore_agent import Coordinator, OpenAIBackend
from pacore_agent.runtime import tune_gc
from pacore_agent.schedule import Schedule

MODEL = "pacore-low"


def _problem(i: int) -> str:
    return f"Problem {i}: how many lattice points lie on the circle x^2 + y^2 = {5 ** (i % 40)}?"


@contextmanager
def pacore_serve_process(upstream: str, concurrency: int) -> Iterator[str]:
    """Run ``pacore serve`` in front of ``upstream`` on a free port; yields its base URL."""
    options = (
        "--upstream-base-url",
        upstream,
        "--upstream-model",
        "pacore-sim",
        "--max-concurrency",
        str(concurrency),
    )
    with pacore_process("serve", *options) as url:
        yield url


async def _wait(session: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            async with session.get(url) as answer:
                if answer.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up within 60 s")
        await asyncio.sleep(0.1)


async def _ask(session: aiohttp.ClientSession, url: str, problem: str, *, stream: bool = False) -> int:
    """One ``pacore-low`` request; the number of SSE events when streaming, else 1."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": problem}], "stream": stream}
    async with session.post(f"{url}/chat/completions", data=json.dumps(body).encode()) as answer:
        if answer.status != 200:
            raise RuntimeError(f"pacore serve answered {answer.status}: {(await answer.text())[:300]}")
        if not stream:
            await answer.read()
            return 1
        events = 0
        async for line in answer.content:
            if line.startswith(b"data:") and not line.startswith(b"data: [DONE]"):
                events += 1
        return events


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _clients(count: int, total: int, one: Callable[[int], Awaitable[int]]) -> tuple[float, int]:
    """``total`` calls of ``one(i)`` by ``count`` concurrent clients; (seconds, summed results)."""
    todo = iter(range(total))
    results = 0

    async def client() -> None:
        nonlocal results
        for i in todo:
            got = await one(i)  # not `results += await ...`: that would read `results` before the await
            results += got

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(count)))
    return time.perf_counter() - start, results


async def main(args: argparse.Namespace) -> None:
    schedule = Schedule.parse(MODEL.removeprefix("pacore-"))
    with (
        sim_server_process("--think-words", "32") as upstream,
        pacore_serve_process(upstream, args.concurrency) as served,
    ):
        headers = {"Content-Type": "application/json", "Authorization": "Bearer none"}
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(headers=headers, connector=connector) as session,
            OpenAIBackend(upstream, "pacore-sim", max_concurrency=args.concurrency) as backend,
        ):
            await _wait(session, served.removesuffix("/v1") + "/health")
            await wait_healthy(backend)
            coordinator = Coordinator(schedule, backend)
            for i in range(8):  # warm-up: connections, imports, caches on both paths
                await _ask(session, served, _problem(i))
                await coordinator.solve(_problem(i))
            through, direct = [], []
            for i in range(args.sequential):
                start = time.perf_counter()
                await _ask(session, served, _problem(i))
                through.append(time.perf_counter() - start)
                start = time.perf_counter()
                await coordinator.solve(_problem(i))
                direct.append(time.perf_counter() - start)
            served_s, _ = await _clients(
                args.clients, args.requests, lambda i: _ask(session, served, _problem(i))
            )

            async def solve(i: int) -> int:
                await coordinator.solve(_problem(i))
                return 1

            direct_s, _ = await _clients(args.clients, args.requests, solve)
            stream_s, events = await _clients(
                args.clients, args.requests, lambda i: _ask(session, served, _problem(i), stream=True)
            )
    p50 = (statistics.median(through) - statistics.median(direct)) * 1000
    p99 = (_pct(through, 0.99) - _pct(direct, 0.99)) * 1000
    rps, direct_rps, cps = args.requests / served_s, args.requests / direct_s, events / stream_s
    print(f"schedule {schedule} ({MODEL}), load {os.getloadavg()[0]:.1f}")
    print(
        f"one at a time, {args.sequential} each: through pacore serve p50 {statistics.median(through) * 1000:.1f} ms "
        f"p99 {_pct(through, 0.99) * 1000:.1f} ms; direct p50 {statistics.median(direct) * 1000:.1f} ms "
        f"p99 {_pct(direct, 0.99) * 1000:.1f} ms"
    )
    print(
        f"{args.clients} clients, {args.requests} requests: {rps:.1f} requests/s served, {direct_rps:.1f}/s direct"
    )
    print(f"streaming: {events} events in {stream_s:.2f} s")
    print(
        f"serve_added_p50_ms={p50:.1f} serve_added_p99_ms={p99:.1f} serve_rps={rps:.1f} serve_stream_cps={cps:.0f}"
    )


if __name__ == "__main__":
    parser = _args.parser(__doc__)
    parser.add_argument("--sequential", type=int, default=100, help="requests one at a time, each way")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=640, help="requests of the concurrent phases")
    parser.add_argument("--concurrency", type=int, default=1024, help="upstream requests in flight at most")
    tune_gc()
    asyncio.run(main(parser.parse_args()))
