"""Coordinator overhead: completions per second through the Coordinator over the raw client.

A simulated server (zero latency) runs in a subprocess. The same `OpenAIBackend` then serves (a) the
raw workload: every request body that 96 problems x [32, 4] send, fired through a semaphore of the
same concurrency with the same HTTP call the backend makes (its `ChatTransport`), and (b) the
Coordinator solving those problems. Runs take about 2 s each: shorter ones drown in the noise of a
shared machine. The ratio of their completion rates is the coordinator's efficiency (target
>= 0.95). The rate of the ``openai`` SDK's typed ``chat.completions.create`` is printed too, for scale.

    python -m benchmarks.overhead [--problems 96] [--concurrency 256]

Ends with one line: ``ratio=<coordinator over raw> coordinator_cps=... raw_cps=... ...``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
import openai

from benchmarks import _args
from benchmarks._sim import lattice_problems, sim_server_process, wait_healthy
from pacore_agent import Coordinator, OpenAIBackend
from pacore_agent.prompts import build_prompt, normalize_problem
from pacore_agent.runtime import tune_gc
from pacore_agent.schedule import Schedule


def raw_bodies(problems: list[str], schedule: Schedule) -> list[list[dict[str, object]]]:
    """The conversations the Coordinator sends, rebuilt with conclusions of the simulated size."""
    bodies: list[list[dict[str, object]]] = []
    for problem in problems:
        messages = normalize_problem(problem)
        references: list[str] = []
        for width in schedule.rounds:
            prompt = build_prompt(messages, references)
            bodies += [prompt] * width
            references = [f"\n\nThe answer is $\\boxed{{{100 + i}}}$." for i in range(width)]
    return bodies


async def run_raw(
    backend: OpenAIBackend, bodies: list[list[dict[str, object]]], concurrency: int, *, typed: bool = False
) -> float:
    """The same requests straight through the backend's HTTP transport, behind a semaphore.

    ``typed=False`` makes the same call `OpenAIBackend` makes (``transport.post`` with the JSON body),
    so the ratio measures the coordinator alone; ``typed=True`` uses the ``openai`` SDK's
    ``chat.completions.create``, what a hand-written client would use.
    """
    limiter = anyio.Semaphore(concurrency)
    model = await backend.resolve_model()
    transport = backend.transport
    sdk = openai.AsyncOpenAI(base_url=backend.base_url, api_key="EMPTY", max_retries=0) if typed else None

    async def one(messages: list[dict[str, object]]) -> None:
        async with limiter:
            if sdk is not None:
                await sdk.chat.completions.create(
                    model=model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=1.0,
                    top_p=1.0,
                )
            else:
                body = {"model": model, "messages": messages, "temperature": 1.0, "top_p": 1.0}
                await transport.post("/chat/completions", body)

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for messages in bodies:
            group.start_soon(one, messages)
    elapsed = time.perf_counter() - start
    if sdk is not None:
        await sdk.close()
    return elapsed


async def run_coordinator(backend: OpenAIBackend, problems: list[str], schedule: Schedule) -> float:
    coordinator = Coordinator(schedule, backend)
    start = time.perf_counter()
    results = await coordinator.solve_many(problems)
    elapsed = time.perf_counter() - start
    assert all(getattr(r, "answer", None) for r in results), "a solve failed"
    return elapsed


async def main(args: argparse.Namespace) -> None:
    with sim_server_process("--think-words", "32") as base_url:
        schedule = Schedule.parse(args.schedule)
        problems = lattice_problems(args.problems)
        bodies = raw_bodies(problems, schedule)
        async with OpenAIBackend(base_url, max_concurrency=args.concurrency) as backend:
            await wait_healthy(backend)
            # Warm-up: connections, imports, the server's caches.
            await run_raw(backend, bodies[: len(bodies) // 4], args.concurrency)
            await run_coordinator(backend, problems[:4], schedule)
            # Alternating runs, raw first and last: raw, coordinator, raw, coordinator, ..., raw. This
            # machine's speed drifts by tens of percent within seconds, so each coordinator run is
            # compared with the mean of the raw runs just before and after it, which cancels a drift
            # that is steady over the three; the headline is the median of these ratios. The typed
            # call, printed for scale only, runs a few times at the end.
            raw_times = [await run_raw(backend, bodies, args.concurrency)]
            coordinator_times: list[float] = []
            for _ in range(args.repeats):
                coordinator_times.append(await run_coordinator(backend, problems, schedule))
                raw_times.append(await run_raw(backend, bodies, args.concurrency))
            typed_times = [
                await run_raw(backend, bodies, args.concurrency, typed=True)
                for _ in range(args.typed_repeats)
            ]
    ratios = [
        (raw_times[i] + raw_times[i + 1]) / 2 / coordinator for i, coordinator in enumerate(coordinator_times)
    ]
    raw_s, coordinator_s = statistics.median(raw_times), statistics.median(coordinator_times)
    typed_s = statistics.median(typed_times)
    completions = len(bodies)
    raw_cps, coordinator_cps, typed_cps = (
        completions / raw_s,
        completions / coordinator_s,
        completions / typed_s,
    )
    print(f"completions per run: {completions} ({args.problems} problems x {list(schedule.rounds)})")
    print(f"runs: {args.repeats} coordinator runs, each between two raw runs; medians below")
    print("ratios (coordinator rate over the mean rate of its two raw neighbours):")
    print("  " + " ".join(f"{r:.3f}" for r in ratios))
    print(f"raw client (same call):       {raw_s:7.2f} s  {raw_cps:8.1f} completions/s")
    print(f"raw client (typed create):    {typed_s:7.2f} s  {typed_cps:8.1f} completions/s")
    print(f"coordinator:                  {coordinator_s:7.2f} s  {coordinator_cps:8.1f} completions/s")
    print(
        f"ratio={statistics.median(ratios):.3f} ratio_vs_typed_create={typed_s / coordinator_s:.3f} "
        f"coordinator_cps={coordinator_cps:.1f} raw_cps={raw_cps:.1f} concurrency={args.concurrency} "
        f"problems={args.problems} schedule={schedule}"
    )


if __name__ == "__main__":
    parser = _args.parser(__doc__, problems=96, schedule="32,4")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=21, help="coordinator runs (default 21)")
    parser.add_argument(
        "--typed-repeats", type=int, default=1, help="runs of the typed call (default 1: it is slow)"
    )
    tune_gc()  # as the pacore commands do (see pacore_agent.runtime)
    anyio.run(main, parser.parse_args())
