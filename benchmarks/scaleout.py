"""Scale-out through SGLang's router: solves/s with 1, 2 and 4 workers, and prefix affinity by policy.

Every worker is a ``pacore sim-server`` process (the SIMULATED model) standing in for an SGLang worker:
at most ``--capacity`` sequences decode at once (the rest queue) and each request takes ``--latency``
seconds, so a worker serves ``capacity / latency`` requests per second and only more workers add
throughput. A real ``sglang_router.launch_router`` runs in front of them; pacore talks to the router
only (``OpenAIBackend(router/v1)``), exactly as ``pacore bench --base-url http://ROUTER/v1`` does.

Measured:

- ``scaleout_speedup_Nw``: solves/s through the router with N workers (cache_aware) over 1 worker;
- ``prefix_affinity_<policy>``: with 4 workers, the share of each synthesis round's requests (they all
  carry the same prompt P(x, M)) that landed on that round's most-used worker, over all rounds;
- the same with the round's K trajectories sent as one request with ``n=K`` (``n_per_request=K``)
  instead of K requests.

The simulated latency does not shrink with ``cached_tokens``: the prefill a cache hit saves on a real
GPU is not in these solves/s, only in the cached-token counts.

Run: ``python -m benchmarks.scaleout`` (about two minutes on two cores).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

import anyio

from benchmarks import _args
from pacore_agent import OpenAIBackend
from pacore_agent.backends.sglang.router import SGLangRouter
from pacore_agent.coordinator import Coordinator
from pacore_agent.testing.sim_workers import SimWorkerProcess, sim_workers


async def run_solves(url: str, problems: int, schedule: str, n_per_request: int) -> float:
    """Solve ``problems`` problems at once through ``url``; returns the wall seconds."""
    async with OpenAIBackend(url, max_concurrency=1024) as backend:
        coordinator = Coordinator(schedule, backend, seed=0, n_per_request=n_per_request)
        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            for index in range(problems):
                group.start_soon(coordinator.solve, f"Scale-out problem {index}: compute {index} * 7.")
        return time.perf_counter() - start


async def affinity(workers: list[SimWorkerProcess]) -> tuple[float, int]:
    """(share of synthesis-round choices on their round's most-used worker, rounds seen)."""
    by_round: dict[str, Counter[str]] = defaultdict(Counter)
    for worker in workers:
        stats = await worker.stats()
        for key, count in stats["synthesis"].items():
            by_round[key][stats["worker"]] += count
    total = sum(sum(c.values()) for c in by_round.values())
    top = sum(max(c.values()) for c in by_round.values())
    return top / max(total, 1), len(by_round)


async def measure(
    count: int, policy: str, args: argparse.Namespace, n_per_request: int = 1
) -> tuple[float, float, list[int]]:
    """(solves/s, affinity, requests per worker) with ``count`` fresh workers behind a fresh router."""
    options = ("--capacity", str(args.capacity), "--latency-median", str(args.latency), "--prefix-cache")
    async with (
        sim_workers(count, *options, "--think-words", "16") as workers,
        SGLangRouter([w.base_url for w in workers], policy=policy, health_check_interval=1) as router,  # type: ignore[arg-type]
    ):
        wall = await run_solves(f"{router.base_url}/v1", args.problems, args.schedule, n_per_request)
        share, _ = await affinity(workers)
        served = [(await w.stats())["served"] for w in workers]
    return args.problems / wall, share, served


async def main(args: argparse.Namespace) -> None:
    rates: dict[int, float] = {}
    shares: dict[str, float] = {}
    for count in (1, 2, 4):
        rate, share, served = await measure(count, "cache_aware", args)
        rates[count] = rate
        print(
            f"{count} worker(s), cache_aware, K requests: {rate:.2f} solves/s, affinity {share:.3f}, requests {served}"
        )
    shares["cache_aware"] = share  # the 4-worker run
    for policy, n_per_request in (("round_robin", 1), ("cache_aware", args.k), ("round_robin", args.k)):
        rate, share, served = await measure(4, policy, args, n_per_request)
        how = "K requests" if n_per_request == 1 else f"one request with n={args.k}"
        if n_per_request == 1:
            shares[policy] = share
        print(f"4 workers, {policy}, {how}: {rate:.2f} solves/s, affinity {share:.3f}, requests {served}")
    print(
        f"scaleout_speedup_2w={rates[2] / rates[1]:.2f} scaleout_speedup_4w={rates[4] / rates[1]:.2f} "
        f"prefix_affinity_cache_aware={shares['cache_aware']:.3f} "
        f"prefix_affinity_round_robin={shares['round_robin']:.3f}"
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _args.parser(__doc__)
    parser.add_argument("--problems", type=int, default=24, help="problems solved at once per measurement")
    parser.add_argument("--k", type=int, default=8, help="trajectories per round")
    parser.add_argument("--capacity", type=int, default=4, help="sequences decoding at once per worker")
    parser.add_argument("--latency", type=float, default=0.4, help="seconds per request")
    args = parser.parse_args(argv)
    args.schedule = f"{args.k},{args.k}"
    return args


if __name__ == "__main__":
    anyio.run(main, parse())
