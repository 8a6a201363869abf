"""The `pacore` command: real subprocesses against `pacore sim-server` on loopback."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacore_agent import SolveResult
from tests.helpers import closed_port, run_pacore, sim_server_process


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with sim_server_process("--split-reasoning", "--seed", "5") as url:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            assert json.load(response)["simulated"] is True
        yield f"{url}/v1"


def test_solve_json_prints_the_solve_result(sim_url: str, tmp_path: Path) -> None:
    trace = tmp_path / "trace.json"
    done = run_pacore(
        "solve", "--base-url", sim_url, "--schedule", "8,2", "--json", "--trace", str(trace), "What is 6*7?"
    )
    assert done.returncode == 0, done.stderr
    result = SolveResult.model_validate_json(done.stdout)
    assert result.schedule == [8, 2, 1]
    assert [len(r.trajectories) for r in result.rounds] == [8, 2, 1]
    assert result.answer is not None and "\\boxed{" in result.answer
    assert SolveResult.model_validate_json(trace.read_text()) == result


def test_solve_prints_answer_rounds_and_tokens(sim_url: str) -> None:
    done = run_pacore("solve", "--base-url", sim_url, "-s", "low", "What is 6*7?")
    assert done.returncode == 0, done.stderr
    assert "pacore-low" in done.stdout and "effective TTC" in done.stdout
    assert "\\boxed{" in done.stdout


def test_solve_reads_the_environment_and_stdin(sim_url: str) -> None:
    env = {**os.environ, "PACORE_BASE_URL": sim_url}
    done = run_pacore("solve", "--json", "-", env=env, stdin="What is 6*7?\n")
    assert done.returncode == 0, done.stderr
    assert SolveResult.model_validate_json(done.stdout).problem[0]["content"] == "What is 6*7?\n"


def test_models_lists_the_simulated_model(sim_url: str) -> None:
    done = run_pacore("models", "--base-url", sim_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pacore-sim"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "--base-url", "http://127.0.0.1:9/v1", "--schedule", "huge", "x"], "unknown schedule"),
        (["solve", "--base-url", "http://127.0.0.1:9/v1", ""], "problem is empty"),
        (["solve", "--model", "/nonexistent/model", "x"], "cannot load the model"),
        (["solve", "--model", "/nonexistent/model", "x"], "PACORE_BASE_URL"),
    ],
)
def test_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PACORE_", "OPENAI_"))}
    done = run_pacore(*args, env=env)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


def test_unreachable_endpoint_fails_cleanly(tmp_path: Path) -> None:
    trace = tmp_path / "partial.json"
    base = f"http://127.0.0.1:{closed_port()}/v1"
    done = run_pacore(
        "solve", "--base-url", base, "--model", "m", "--schedule", "2", "--trace", str(trace), "x"
    )
    assert done.returncode == 1
    assert "could not talk to" in " ".join(done.stderr.split())
    partial = SolveResult.model_validate_json(trace.read_text())
    assert all(t.status == "failed" for t in partial.rounds[0].trajectories)


def test_help_is_useful() -> None:
    for command in ("solve", "sim-server", "models"):
        done = run_pacore(command, "--help")
        assert done.returncode == 0
        assert "--" in done.stdout
    assert "--schedule" in run_pacore("solve", "--help").stdout


def test_solve_stream_shows_live_progress(sim_url: str) -> None:
    done = run_pacore(
        "solve", "--base-url", sim_url, "-s", "6,2", "--stream", "--min-success", "0.5", "What is 6*7?"
    )
    assert done.returncode == 0, done.stderr
    assert "(live)" in done.stderr  # the live panel goes to stderr
    assert "\\boxed{" in done.stdout


def test_solve_budget_options(sim_url: str, tmp_path: Path) -> None:
    trace = tmp_path / "partial.json"
    stopped = run_pacore(
        "solve", "--base-url", sim_url, "-s", "8,2", "--budget-calls", "5", "--trace", str(trace), "x"
    )
    assert stopped.returncode == 1
    assert "calls budget" in " ".join(stopped.stderr.split())
    assert SolveResult.model_validate_json(trace.read_text()).calls == 5
    synthesized = run_pacore(
        "solve",
        "--base-url",
        sim_url,
        "-s",
        "8,2",
        "--budget-calls",
        "5",
        "--on-budget",
        "synthesize",
        "--json",
        "x",
    )
    assert synthesized.returncode == 0, synthesized.stderr
    result = SolveResult.model_validate_json(synthesized.stdout)
    assert [len(r.trajectories) for r in result.rounds] == [5, 1]
    bad = run_pacore("solve", "--base-url", sim_url, "--budget-cost", "1", "--price", "cheap", "x")
    assert bad.returncode == 2 and "--price must be" in bad.stderr


def test_bench_takes_the_budget_options_of_solve(sim_url: str, tmp_path: Path) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text('{"id": "six-times-seven", "problem": "What is 6*7?", "answer": "42"}\n')
    out = tmp_path / "run"
    bench = ["bench", "mine", "--data", str(data), "-m", "pacore:[8,2]", "--out", str(out), "--no-report"]
    # $1 per million tokens and a budget of $0.0002: about 200 tokens per solve, less than one round.
    # No --model: the price is that of whatever model the endpoint serves.
    done = run_pacore(*bench, "--base-url", sim_url, "--budget-cost", "0.0002", "--price", "1,1")
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["budget"]["max_cost"] == 0.0002
    assert config["budget"]["prices"] == {"*": {"input": 1.0, "output": 1.0, "cached_input": None}}
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["error"]["type"] == "BudgetExceeded" and "cost budget" in record["error"]["message"]
    assert record["correct"] is False
