"""Memory and event-loop lag with 10,000 trajectories in flight at once.

A simulated server runs in its own process behind a GATE: it holds every request until N are in flight,
keeps them all waiting ``--hold`` seconds more, then answers all of them, so the client really has N
trajectories in flight together. The client, this process, runs PaCoRe on 313 problems x [32] through
one `OpenAIBackend` with ``max_concurrency`` = N (10,016 first-round trajectories at once, then 313
synthesis calls), while a ticker task measures how late ``asyncio.sleep(0.01)`` wakes up (event-loop lag)
and /proc/self/status gives the resident memory. Only the client process is measured; the server's
memory is its own process's.

The lag is reported per phase, split at the server's timestamps: ``sending`` (requests going out until
the N-th arrives), ``held`` (all N in flight, nothing else to do), ``answers`` (N answers coming back,
then the synthesis round). The final line's p99 is over the sending and answers phases, where the client
works: the held phase, idle by construction, would only dilute it.

    python benchmarks/memory.py [--problems 313] [--width 32] [--hold 2] [--think-words 32]

Answers come back at ``--answer-rate`` per second once released (a real engine finishes its sequences at
different times; 0 releases all at the same instant, the worst case). The collector thresholds are
raised as the ``pacore`` commands raise them (`pacore_agent.runtime.tune_gc`).

Targets: peak RSS under 1 GiB and p99 loop lag under 50 ms. Ends with one line:
``rss_mib=<peak RSS of the client> loop_lag_p99_ms=<sending and answers> trajectories=<peak in flight>``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _args
from benchmarks._sim import free_port
from pacore_agent import Coordinator, OpenAIBackend
from pacore_agent.runtime import tune_gc

MIB = 1024 * 1024
GATE_TIMEOUT_S = 600.0
WARM_UP_REQUESTS = 3  # the client's warm-up solve, [2]: answered at once, before the gate counts


def raise_fd_limit() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def proc_status(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


# -- the gated server (a subprocess) ---------------------------------------------------------------


async def serve(port: int, gate: int, hold: float, think_words: int, spread: float) -> None:
    from aiohttp import web

    from pacore_agent.backends.sim import SimConfig, SimEngine
    from pacore_agent.backends.sim_server import SimServer

    engine = SimEngine(SimConfig(seed=1, think_words=think_words, record_requests=False))
    released = asyncio.Event()
    arrived: list[float] = []
    spread_rng = random.Random(0)

    async def release_later() -> None:
        print(f"arrived_all={time.time():.3f} in_flight={engine.in_flight}", flush=True)
        await asyncio.sleep(hold)
        print(f"released={time.time():.3f}", flush=True)
        released.set()

    async def gated_sleep(seconds: float) -> None:
        if released.is_set() or engine.served < WARM_UP_REQUESTS:
            return
        if not arrived:
            arrived.append(time.time())
            print(f"first_arrived={arrived[0]:.3f}", flush=True)
        if engine.in_flight >= gate and len(arrived) == 1:
            arrived.append(time.time())
            await release_later()
        try:
            await asyncio.wait_for(released.wait(), GATE_TIMEOUT_S)
        except TimeoutError:  # fewer than N arrived (the client failed): do not hang
            print(f"gate_timeout in_flight={engine.in_flight}", flush=True)
            released.set()
        # A real engine finishes its sequences at different times: answers come back spread out.
        await asyncio.sleep(spread_rng.uniform(0.0, spread))

    server = SimServer(engine, sleep=gated_sleep)
    # The site is built here for its backlog: thousands of connections arrive at once.
    runner = web.AppRunner(server.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(f"max_in_flight={engine.max_in_flight} served={engine.served}", flush=True)
    await runner.cleanup()


# -- the measured client ---------------------------------------------------------------------------


class Monitor:
    """Samples event-loop lag every 10 ms (with wall-clock stamps), RSS and requests in flight."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.backend = backend
        self.ticks: list[tuple[float, float]] = []  # (time.time() at wake-up, lag in seconds)
        self.rss: list[int] = []
        self.in_flight = 0

    async def run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            self.ticks.append((time.time(), time.perf_counter() - start - 0.01))
            self.in_flight = max(self.in_flight, int(self.backend.limiter.borrowed_tokens))
            if len(self.ticks) % 10 == 0:
                self.rss.append(proc_status("VmRSS"))


async def client(url: str, problems: int, width: int) -> dict[str, Any]:
    backend = OpenAIBackend(url, "pacore-sim", max_concurrency=problems * width)
    async with backend:
        # Warm-up: imports, the client, a connection; then the baseline.
        await Coordinator([2], backend).solve("warm-up problem")
        gc.collect()
        baseline = proc_status("VmRSS")
        texts = [f"Problem {i}: count the lattice points on x^2 + y^2 = {5**i}." for i in range(problems)]
        monitor = Monitor(backend)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        async with anyio.create_task_group() as group:
            group.start_soon(monitor.run)
            start = time.perf_counter()
            results = await Coordinator([width], backend).solve_many(texts)
            wall = time.perf_counter() - start
            group.cancel_scope.cancel()
        after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "baseline": baseline,
        "peak": proc_status("VmHWM"),
        "rss_sampled": max(monitor.rss, default=baseline),
        "ticks": monitor.ticks,
        "wall": wall,
        "cpu": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime,
        "in_flight": monitor.in_flight,
        "failed": sum(1 for r in results if not hasattr(r, "answer")),
        "requests": problems * width + problems,
    }


def main() -> None:
    parser = _args.parser(__doc__, problems=313)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument(
        "--hold", type=float, default=2.0, help="seconds all requests stay in flight together"
    )
    parser.add_argument("--think-words", type=int, default=32)
    parser.add_argument(
        "--answer-rate",
        type=float,
        default=250.0,
        help="answers per second once released (spread uniformly, as an engine finishes sequences at "
        "different times; 0 = all at the same instant, the worst case)",
    )
    parser.add_argument("--spread", type=float, default=0.0, help=argparse.SUPPRESS)  # internal
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the gated server
    parser.add_argument("--gate", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit()
    tune_gc()  # as the pacore commands do: default thresholds cost ~40% CPU and 1.5 s pauses here
    if args.serve:
        asyncio.run(serve(args.serve, args.gate, args.hold, args.think_words, args.spread))
        return

    gate = args.problems * args.width
    port = free_port()
    spread = gate / args.answer_rate if args.answer_rate > 0 else 0.0
    command = [sys.executable, __file__, "--serve", str(port), "--gate", str(gate), "--hold", str(args.hold)]
    command += ["--spread", str(spread)]
    server = subprocess.Popen(
        [*command, "--think-words", str(args.think_words)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"the gated server did not start: {line}{server.stdout.read()}")
        figures = anyio.run(client, f"http://127.0.0.1:{port}/v1", args.problems, args.width)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    stamps = dict(token.split("=", 1) for token in output.split() if "=" in token)
    arrived_all, released = float(stamps.get("arrived_all", "inf")), float(stamps.get("released", "inf"))
    ticks: list[tuple[float, float]] = figures["ticks"]
    phases = {
        "sending": [lag for at, lag in ticks if at <= arrived_all],
        "held": [lag for at, lag in ticks if arrived_all < at <= released],
        "answers": [lag for at, lag in ticks if at > released],
    }
    working = phases["sending"] + phases["answers"]
    lags = [lag for _, lag in ticks]

    peak_mib, base_mib = figures["peak"] / MIB, figures["baseline"] / MIB
    per_kib = (figures["peak"] - figures["baseline"]) / max(figures["in_flight"], 1) / 1024
    print(
        f"client: {args.problems} problems x [{args.width}] = {gate} first-round trajectories at once, then "
        f"{args.problems} synthesis calls; {figures['failed']} solves failed; wall {figures['wall']:.1f} s, "
        f"client CPU {figures['cpu']:.1f} s = {1000 * figures['cpu'] / figures['requests']:.2f} ms per request"
    )
    print(
        f"in flight at once: {figures['in_flight']} (client limiter peak), {stamps.get('max_in_flight', '?')} "
        f"(server peak); held together for {args.hold:g} s"
    )
    print(
        f"RSS: baseline {base_mib:.0f} MiB after warm-up, peak {peak_mib:.0f} MiB (VmHWM; sampled "
        f"{figures['rss_sampled'] / MIB:.0f} MiB): {per_kib:.1f} KiB per trajectory in flight"
    )
    print(
        f"event-loop lag, {len(lags)} ticks of 10 ms: p50 {1000 * statistics.median(lags):.1f} ms, "
        f"p99 {1000 * p99(lags):.1f} ms, max {1000 * max(lags):.0f} ms (whole run)"
    )
    for name, values in phases.items():
        if values:
            print(
                f"  {name:8} {len(values):5} ticks, {sum(values) + 0.01 * len(values):6.1f} s: p50 "
                f"{1000 * statistics.median(values):7.1f} ms, p99 {1000 * p99(values):7.1f} ms, "
                f"max {1000 * max(values):6.0f} ms"
            )
    print(f"targets: RSS < 1024 MiB: {peak_mib < 1024}; p99 lag < 50 ms: {1000 * p99(working) < 50}")
    print(
        f"rss_mib={peak_mib:.0f} loop_lag_p99_ms={1000 * p99(working):.1f} trajectories={figures['in_flight']}"
    )


if __name__ == "__main__":
    main()
