"""Bad input to the ``pacore`` command: one line on standard error that names the option, never a traceback.

Real subprocesses, as a user runs them; and the hosted reasoning-model recipe through ``pacore solve``
against the simulated server answering as GPT-5 does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from pacore_agent import SimConfig, SimServer, SolveResult
from pacore_agent.evaluation.store import RunStore
from tests.helpers import PACORE, run_pacore
from tests.test_report import make_record

SERVE_UNREACHABLE = ["serve", "--upstream-base-url", "http://127.0.0.1:9/v1", "--upstream-model", "m"]
"""``pacore serve`` in front of an upstream nobody listens on (the errors come before it is reached)."""


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exit code 2 and one ``error:`` line containing every needle."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(errors[0]) > 20, done.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    with RunStore.open(directory, config={"model": "m", "protocol": "fresh"}) as store:
        for sample in range(3):
            store.append_sync(make_record("p1", sample, sample < 2, method="single"))
    return directory


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["solve", "--backend", "sim", "--concurrency", "0", "2+2?"],
            ["--concurrency must be at least 1, got 0"],
        ),
        (["solve", "--backend", "sim", "--temperature", "hot", "2+2?"], ["--temperature", "'hot'"]),
        (["solve", "--backend", "sim", "--top-p", "1.5", "2+2?"], ["--top-p must be within (0, 1]"]),
        (["solve", "--backend", "sim", "--max-tokens", "0", "2+2?"], ["--max-tokens must be at least 1"]),
        (["solve", "--backend", "sim", "--extra-body", "{oops", "2+2?"], ["--extra-body is not valid JSON"]),
        (
            ["solve", "--backend", "sim", "--extra-body", "[1]", "2+2?"],
            ["--extra-body must be a JSON object"],
        ),
        (
            ["solve", "--backend", "sim", "--min-success", "1.5", "2+2?"],
            ["--min-success 1.5 is neither a share"],
        ),
        (["solve", "--backend", "sim", "--hedge", "1.5", "2+2?"], ["--hedge 1.5 is neither a share"]),
        (["solve", "--backend", "sim", "--hedge", "nan", "2+2?"], ["--hedge must be a share", "got nan"]),
        (["solve", "--backend", "sim", "--min-success", "inf", "2+2?"], ["--min-success must be a share"]),
        (["sim-server", "--port", "70000"], ["--port must be within 0-65535"]),
        (
            [*SERVE_UNREACHABLE, "--port", "-1"],
            ["--port must be within 0-65535"],
        ),
        (["sim-server", "--answers", "missing.jsonl"], ["--answers missing.jsonl: cannot read it"]),
        (
            ["bench", "aime2025", "-m", "single", "--out", "o", "--concurrency", "0"],
            ["--concurrency must be"],
        ),
        (["bench", "aime2025", "-m", "single", "--out", "o", "--max-in-flight", "0"], ["--max-in-flight"]),
        # bench's older name of --budget-calls still works; the error names the option by its name
        (["bench", "aime2025", "-m", "single", "--out", "o", "--max-calls", "0"], ["--budget-calls must be"]),
        (
            ["bench", "aime2025", "-m", "single", "--out", "o", "--on-budget", "later"],
            ["--on-budget must be"],
        ),
        (
            ["bench", "aime2025", "-m", "single", "--out", "o", "--budget-cost", "2"],
            ["--budget-cost needs --price"],
        ),
        (["solve", "--backend", "sim", "--budget-cost", "2", "2+2?"], ["--budget-cost needs --price"]),
        (
            ["solve", "--backend", "sim", "--budget-tokens", "-5", "2+2?"],
            ["--budget-tokens must be at least 1"],
        ),
        (
            ["solve", "--backend", "sim", "--round-timeout", "0", "2+2?"],
            ["--round-timeout must be a positive"],
        ),
    ],
)
def test_bad_options_get_one_line_naming_the_option(
    args: list[str], needles: list[str], tmp_path: Path
) -> None:
    one_line_error(run_pacore(*args, cwd=tmp_path), *needles)


def test_sim_server_answers_with_a_bad_line(tmp_path: Path) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"problem": "1+1", "answer": "2"}\n[1, 2]\n', encoding="utf-8")
    one_line_error(
        run_pacore("sim-server", "--answers", str(answers), cwd=tmp_path),
        "line 2: not a JSON object with problem and answer",
    )


def test_bench_out_on_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("not a run directory\n")
    done = run_pacore("bench", "aime2025", "-m", "single", "--out", str(target))
    one_line_error(done, f"--out {target} is a file", "give a directory")


def test_report_outputs_under_a_file(run_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    for option in ("--csv", "--markdown", "--plot"):
        target = blocker / "out.file"
        one_line_error(
            run_pacore("report", str(run_dir), option, str(target)), f"{option} {target}", "cannot write"
        )


def test_solve_trace_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    target = blocker / "trace.json"
    done = run_pacore("solve", "--backend", "sim", "--schedule", "2", "--trace", str(target), "2+2?")
    one_line_error(done, f"--trace {target}", "cannot write")


def test_report_refuses_a_run_with_a_corrupt_middle_line(run_dir: Path) -> None:
    results = run_dir / "results.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + '{"benchmark": "aime2025"}\n' + "".join(lines[1:]))
    one_line_error(
        run_pacore("report", str(run_dir)), "line 2 is not a valid RunRecord", "repair or remove it"
    )
    # A torn last line is a run still being written: it is skipped, not refused.
    results.write_text("".join(lines) + '{"benchmark": "aim')
    done = run_pacore("report", str(run_dir))
    assert done.returncode == 0, done.stderr


def test_serve_on_a_busy_port(busy_port: int) -> None:
    done = run_pacore(*SERVE_UNREACHABLE, "--port", str(busy_port))
    one_line_error(done, f"--port {busy_port}", "already in use", "0 for a free one")
    one_line_error(
        run_pacore("sim-server", "--port", str(busy_port)), f"--port {busy_port}", "already in use"
    )


@pytest.mark.anyio
async def test_solve_with_a_hosted_reasoning_model_leaves_refused_fields_out() -> None:
    key = "sk-test-hosted-cli-0123456789"
    config = SimConfig(model="gpt-5", hosted_reasoning=True, seed=4)
    async with SimServer(config, api_key=key) as server:
        env = {**os.environ, "HOSTED_KEY": key}
        args = [
            *PACORE,
            "solve",
            "--base-url",
            server.base_url,
            "--api-key-env",
            "HOSTED_KEY",
            "--model",
            "gpt-5",
            "--temperature",
            "none",
            "--top-p",
            "none",
            "--extra-body",
            '{"reasoning_effort":"high"}',
            "--schedule",
            "4",
            "--json",
            "How many primes are below 30?",
        ]
        done = await anyio.run_process(args, env=env, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert key not in stderr and key not in done.stdout.decode()
    result = SolveResult.model_validate_json(done.stdout)
    assert result.answer and all(t.ok for t in result.trajectories)
    bodies = server.engine.requests
    assert len(bodies) == 5  # nothing refused, nothing resent
    assert all(set(body) <= {"model", "messages", "reasoning_effort"} for body in bodies), bodies[0].keys()
    assert all(body["reasoning_effort"] == "high" and body["model"] == "gpt-5" for body in bodies)
    assert "warning" not in stderr.lower()
    json.loads(done.stdout)  # the whole of standard output is the JSON result
