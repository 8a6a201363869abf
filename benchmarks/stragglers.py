"""Stragglers: how much quorum and hedging cut the wall time of a solve under heavy-tailed latency.

Every request to the simulated server takes a log-normal time (median --median seconds, sigma 1), so
the slowest of K trajectories decides when a wait-all round ends. The same problems are solved three
ways, on the same server and seeds:

- wait-all (the official pipeline),
- quorum: the next round starts when 75% of the round has finished (``min_success=0.75``),
- hedging: 25% extra trajectories are launched and the first K kept (``hedge=0.25``).

It prints the median solve wall time and the final accuracy of each, and ends with one line:
``quorum_speedup=<wait-all median / quorum median> hedge_speedup=... accuracy_wait_all=... accuracy_quorum=...``.

    python benchmarks/stragglers.py [--problems 48] [--schedule 16] [--median 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from benchmarks import _args
from benchmarks._sim import sim_server_process, wait_healthy
from pacore_agent import Coordinator, OpenAIBackend, SolveResult
from pacore_agent.evaluation.answers import agrade
from pacore_agent.runtime import tune_gc


async def run(
    backend: OpenAIBackend, problems: dict[str, str], schedule: list[int], **options: Any
) -> tuple[float, float, float]:
    """(median solve seconds, accuracy, total seconds) of one configuration."""
    coordinator = Coordinator(schedule, backend, **options)
    start = time.perf_counter()
    results = await coordinator.solve_many(list(problems))
    total = time.perf_counter() - start
    solved = [r for r in results if isinstance(r, SolveResult)]
    assert len(solved) == len(problems), "a solve failed"
    correct = [await agrade(r.answer, problems[str(r.problem[0]["content"])]) for r in solved]
    return statistics.median(r.wall_s for r in solved), sum(correct) / len(correct), total


async def main(args: argparse.Namespace) -> None:
    problems = {
        f"Problem {i}: find the hidden quantity number {i}.": str(100 + i) for i in range(args.problems)
    }
    schedule = [int(w) for w in args.schedule.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        answers = Path(folder) / "answers.jsonl"
        answers.write_text(
            "".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in problems.items())
        )
        # The server runs in its own process (the other core), so its CPU does not slow the client.
        options = [
            "--seed",
            str(args.seed),
            "--answers",
            str(answers),
            "--accuracy",
            "0.45",
            "--think-words",
            "16",
        ]
        options += ["--latency-median", str(args.median), "--latency-sigma", "1.0"]
        with sim_server_process(*options) as base_url:
            async with OpenAIBackend(base_url, max_concurrency=4096) as backend:
                await wait_healthy(backend)
                await run(backend, dict(list(problems.items())[:4]), schedule)  # warm-up
                wait_all = await run(backend, problems, schedule)
                quorum = await run(backend, problems, schedule, min_success=0.75)
                hedged = await run(backend, problems, schedule, hedge=0.25)
    print(
        f"SIMULATED endpoint, log-normal latency (median {args.median}s, sigma 1); {args.problems} problems x {schedule}"
    )
    for name, (median, accuracy, total) in (
        ("wait-all", wait_all),
        ("quorum 0.75", quorum),
        ("hedge +25%", hedged),
    ):
        print(f"{name:12s} median solve {median:6.3f} s   accuracy {accuracy:.3f}   batch {total:6.2f} s")
    print(
        f"quorum_speedup={wait_all[0] / quorum[0]:.2f} hedge_speedup={wait_all[0] / hedged[0]:.2f} "
        f"accuracy_wait_all={wait_all[1]:.3f} accuracy_quorum={quorum[1]:.3f} accuracy_hedge={hedged[1]:.3f}"
    )


if __name__ == "__main__":
    parser = _args.parser(__doc__, problems=48, schedule="16")
    parser.add_argument("--median", type=float, default=0.5, help="median seconds per request")
    parser.add_argument("--seed", type=int, default=0)
    tune_gc()  # as the pacore commands do (see pacore_agent.runtime)
    anyio.run(main, parser.parse_args())
