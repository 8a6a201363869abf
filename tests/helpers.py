"""What several test files share: async waiting, ports, a fake sleep, and the ``pacore`` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from pacore_agent import OpenAIBackend, SimConfig, SimServer
from pacore_agent.evaluation.store import PoolEntry, PoolMessage, RunRecord
from pacore_agent.results import SolveResult

if TYPE_CHECKING:
    from training.train import TrainConfig


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition that another task makes true (bounded, so a bug fails instead of hanging)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.002)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeSleep:
    """An injected sleep that records durations and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.lowlevel.checkpoint()


REPO = Path(__file__).resolve().parents[1]
PACORE = [sys.executable, "-m", "pacore_agent.cli"]
"""The ``pacore`` command, run by this interpreter (so it is the checkout under test)."""


@contextmanager
def sim_server_process(*options: str, start_timeout: float = 60.0) -> Iterator[str]:
    """`pacore sim-server` in its own process on a free loopback port, stopped (SIGTERM) on exit.

    Args:
        *options: More ``sim-server`` options (``--seed``, ``--answers`` ...).
        start_timeout: Seconds it may take to answer ``/health``.

    Yields:
        Its base URL, without ``/v1``.
    """
    port = closed_port()
    process = subprocess.Popen(
        [*PACORE, "sim-server", "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read() if process.stdout and process.poll() is not None else ""
                    raise RuntimeError(f"sim-server did not start: {output}") from None
                time.sleep(0.05)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@asynccontextmanager
async def served_sim(
    config: SimConfig | None = None, **backend_options: Any
) -> AsyncIterator[tuple[SimServer, OpenAIBackend]]:
    """The simulated server on loopback (default: ``SimConfig(seed=3)``) and an `OpenAIBackend` on it."""
    async with SimServer(config or SimConfig(seed=3)) as server:
        async with OpenAIBackend(server.base_url, **backend_options) as backend:
            yield server, backend


def run_pacore(
    *args: str,
    timeout: float = 120,
    cwd: Path | None = REPO,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``pacore ARGS`` to the end in a subprocess; its output is captured as text."""
    return subprocess.run(
        [*PACORE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, input=stdin
    )


def run_module(module: str, *args: str, timeout: float = 100) -> list[str]:
    """Run ``python -m MODULE ARGS`` from the repository root to a zero exit; returns its stdout's lines."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout.strip().splitlines()


def graded_record(
    result: SolveResult, grading: dict[str, Any], *, problem_id: str, sample: int, benchmark: str = "aime2025"
) -> RunRecord:
    """The stored record of a solve of ``problem_id`` and its ``grading`` (predicted, score, correct ...)."""
    return RunRecord(
        benchmark=benchmark,
        problem_id=problem_id,
        method=result.method,
        sample=sample,
        result=result,
        predicted=grading["predicted"],
        correct=grading["correct"],
        score=grading["score"],
        info={"grading": grading},
    )


def one_problem_run(tmp_path: Path, messages: list[PoolMessage], **settings: Any) -> TrainConfig:
    """A `training.train` config on the untrained tiny chat model and a one-problem pool ("1+2?", answer 3).

    Args:
        tmp_path: Where the model (``tiny``), the pool and the run (``run``) go.
        messages: The problem's pooled messages.
        **settings: The other `TrainConfig` fields; the curriculum is off.
    """
    from pacore_agent.testing.tiny_model import build_tiny_model
    from training.pool import write_pool_entries
    from training.train import TrainConfig

    model = build_tiny_model(tmp_path / "tiny", train_steps=0)
    entry = PoolEntry(problem_id="p", problem="1+2?", answer="3", messages=messages)
    pool = write_pool_entries(tmp_path / "pool.jsonl", [entry])
    return TrainConfig(model=str(model), out=str(tmp_path / "run"), pool=str(pool), stage="none", **settings)
