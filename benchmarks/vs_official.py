"""pacore against the paper's own inference loop (stepfun-ai/PaCoRe), same endpoint, same concurrency.

The paper's loop runs as published: its ``pacore/batch_inference/base_exp.py`` (the ``Exp`` class and
its ``pacore/utils.py`` HTTP client) is imported from a checkout of its public repository, given by
``--official PATH`` or cloned from GitHub where the network allows. Nothing of it is copied here; if it
cannot be had, this script says so and exits with status 2 (it never compares against a stand-in).

Both clients solve the same problems (32 x [32, 4] by default: 1,184 calls) at the same concurrency
(1,024) against one simulated server in its own process, in three settings: zero latency, latency
drawn uniformly from 0.1-0.9 s, and 10% of requests answered 429 or 503. Each run is a new process;
runs alternate (official, pacore, official, pacore, ...). The server counts requests in flight.

    python -m benchmarks.vs_official --official /path/to/PaCoRe [--repeats 3] [--problems 32]

Last line: ``vs_official_zero=... vs_official_latency=... vs_official_faults=... inflight_ratio=...``
(ratios of median solves/s, pacore over official; ``inflight_ratio`` is pacore's peak in flight over
the limit in the latency setting: the most slots its limiter held at once). It goes on with
``server_inflight_ratio=...``: the same peak as the server counted it, a stricter measure (a request
counts there only once its body has arrived; those answered in 0.1 s leave before the last ones come).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import _args
from benchmarks._sim import free_port, lattice_problems

OFFICIAL_REPO = "https://github.com/stepfun-ai/PaCoRe"
OFFICIAL_FILES = ("pacore/batch_inference/base_exp.py", "pacore/utils.py")
SETTINGS: dict[str, list[str]] = {
    "zero": [],
    "latency": ["--latency", "0.1", "0.9"],
    "faults": ["--faults", "0.1"],
}


class OfficialMissing(Exception):
    """The paper's code is not at hand."""


def official_checkout(path: str | None, workdir: Path) -> Path:
    """The checkout of the paper's repository: ``path``, or a fresh clone into ``workdir``.

    Raises:
        OfficialMissing: ``path`` lacks the paper's files, or no clone could be made.
    """
    if path is None:
        target = workdir / "PaCoRe"
        try:
            done = subprocess.run(
                ["git", "clone", "--depth", "1", "--quiet", OFFICIAL_REPO, str(target)],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OfficialMissing(f"could not clone {OFFICIAL_REPO}: {exc}") from None
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["git failed"])[-1]
            raise OfficialMissing(f"could not clone {OFFICIAL_REPO}: {reason}")
        root = target
    else:
        root = Path(path).expanduser().resolve()
    missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
    if missing:
        raise OfficialMissing(f"{root} is not a checkout of {OFFICIAL_REPO}: no {', '.join(missing)}")
    return root


# -- the two clients, each run in a process of its own ----------------------------------------------


def run_official(root: str, url: str, count: int, schedule: list[int], concurrency: int) -> dict[str, Any]:
    """The paper's ``Exp`` as published, configured as its example configures it (data, rounds,
    concurrency); its final single-answer round is its own."""
    sys.path.insert(0, root)
    from loguru import logger
    from pacore.batch_inference.base_exp import Exp  # type: ignore[import-not-found]

    logger.remove()  # its per-request log lines would cost the client time and flood the terminal
    workdir = Path(tempfile.mkdtemp(prefix="vs-official-"))
    data = workdir / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": problem}]}) + "\n"
            for i, problem in enumerate(lattice_problems(count))
        )
    )

    class Bench(Exp):  # type: ignore[misc]
        model_name = "pacore-sim"
        api_base = f"{url}/chat/completions"
        data_path = str(data)
        output_dir = str(workdir / "out")
        num_responses_per_round = schedule
        max_concurrent = concurrency
        max_tokens = None  # as the paper's example: generate until the model's limit

    start = time.perf_counter()
    results = Bench().run()
    elapsed = time.perf_counter() - start
    solved = sum(1 for r in results if r.get("final_response"))
    return {"seconds": elapsed, "solved": solved}


async def _run_pacore(url: str, count: int, schedule: list[int], concurrency: int) -> dict[str, Any]:
    from pacore_agent import Coordinator, OpenAIBackend
    from pacore_agent.schedule import Schedule

    async with OpenAIBackend(url, "pacore-sim", max_concurrency=concurrency) as backend:
        coordinator = Coordinator(Schedule.parse(schedule), backend)
        start = time.perf_counter()
        results = await coordinator.solve_many(lattice_problems(count))
        elapsed = time.perf_counter() - start
        held = backend.limiter.peak
    solved = sum(1 for r in results if getattr(r, "answer", None) is not None)
    return {"seconds": elapsed, "solved": solved, "held": held}


def run_pacore(url: str, count: int, schedule: list[int], concurrency: int) -> dict[str, Any]:
    from pacore_agent.runtime import tune_gc

    tune_gc()  # as the pacore commands do
    return asyncio.run(_run_pacore(url, count, schedule, concurrency))


# -- the driver -------------------------------------------------------------------------------------


def _http(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait_healthy(root_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the simulated server exited at start")
        try:
            _http(f"{root_url}/health")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the simulated server did not start within 60 s")


def one_run(client: str, args: argparse.Namespace, url: str, root: Path) -> dict[str, Any]:
    """One run of ``client`` in a new process; its figures, with the server's peak in flight."""
    root_url = url.removesuffix("/v1")
    _http(f"{root_url}/stats/reset", "POST")
    command = [
        sys.executable, "-m", "benchmarks.vs_official", "--worker", client, "--url", url,
        "--official", str(root), "--problems", str(args.problems), "--schedule", args.schedule,
        "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.run_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the {client} run failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["peak"] = _http(f"{root_url}/_sim/stats")["max_in_flight"]
    figures["rate"] = figures["solved"] / figures["seconds"]
    return figures


def compare(setting: str, args: argparse.Namespace, root: Path) -> dict[str, list[dict[str, Any]]]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._sim_serve", "--port", str(port), *SETTINGS[setting]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    runs: dict[str, list[dict[str, Any]]] = {"official": [], "pacore": []}
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", server)
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(args.repeats):
            for client in ("official", "pacore"):
                figures = one_run(client, args, url, root)
                runs[client].append(figures)
                print(
                    f"  {setting:8s} {client:8s} {figures['solved']:3d} solved in {figures['seconds']:6.2f} s "
                    f"= {figures['rate']:6.2f} solves/s, peak in flight {figures['peak']} at the server"
                    + (f", {figures['held']} slots held" if "held" in figures else ""),
                    flush=True,
                )
    finally:
        server.terminate()
        server.wait(timeout=10)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = _args.parser(__doc__)
    parser.add_argument("--official", help="a checkout of github.com/stepfun-ai/PaCoRe (default: clone it)")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument(
        "--schedule", default="32,4", help="pacore's rounds; the paper's loop adds its final 1"
    )
    parser.add_argument("--concurrency", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="runs per client and setting (default 3)")
    parser.add_argument("--settings", default="zero,latency,faults")
    parser.add_argument("--run-timeout", type=float, default=600)
    parser.add_argument("--worker", choices=("official", "pacore"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    schedule = [int(width) for width in args.schedule.split(",")]
    if args.worker is not None:
        if args.worker == "official":
            figures = run_official(args.official, args.url, args.problems, schedule, args.concurrency)
        else:
            figures = run_pacore(args.url, args.problems, schedule, args.concurrency)
        print(json.dumps(figures))
        return 0
    settings = [name.strip() for name in args.settings.split(",")]
    unknown = [name for name in settings if name not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    with tempfile.TemporaryDirectory(prefix="vs-official-") as workdir:
        try:
            root = official_checkout(args.official, Path(workdir))
        except OfficialMissing as missing:
            print(f"the paper's code is not available: {missing}; pass --official PATH", file=sys.stderr)
            return 2
        print(
            f"paper's code: {root}; {args.problems} problems x {schedule} (+ its final 1) at concurrency "
            f"{args.concurrency}, {args.repeats} alternating runs per setting, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        ratios: dict[str, float] = {}
        inflight = server_inflight = float("nan")
        for setting in settings:
            runs = compare(setting, args, root)
            official = statistics.median(run["rate"] for run in runs["official"])
            pacore = statistics.median(run["rate"] for run in runs["pacore"])
            ratios[setting] = pacore / official if official else float("inf")
            peak = max(run["peak"] for run in runs["pacore"])
            official_peak = max(run["peak"] for run in runs["official"])
            print(
                f"{setting}: official {official:.2f} solves/s (peak {official_peak}), pacore {pacore:.2f} "
                f"solves/s (peak {peak}): ratio {ratios[setting]:.2f}",
                flush=True,
            )
            if setting == "latency" or inflight != inflight:
                inflight = max(run["held"] for run in runs["pacore"]) / args.concurrency
                server_inflight = peak / args.concurrency
    print(
        " ".join(f"vs_official_{name}={ratio:.2f}" for name, ratio in ratios.items())
        + f" inflight_ratio={inflight:.2f} server_inflight_ratio={server_inflight:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
