"""Benchmark runs over real HTTP on the simulated server: fresh and pool evaluation, resume, failures, CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacore_agent import Faults, OpenAIBackend, SimConfig, SimServer, UsageError
from pacore_agent.evaluation.bench import (
    BenchSettings,
    MethodSpec,
    load_problems,
    parse_methods,
    read_failures,
    run_bench,
)
from pacore_agent.evaluation.datasets import DatasetUnavailableError, Problem
from pacore_agent.evaluation.grading import grade_result
from pacore_agent.evaluation.report import CSV_COLUMNS, summarize
from pacore_agent.evaluation.store import RunRecord, RunStore
from tests.helpers import PACORE, REPO, run_pacore, sim_server_process


@pytest.fixture(scope="module")
def aime() -> list[Problem]:
    try:
        _, problems, _ = load_problems("aime2025")
    except DatasetUnavailableError:
        pytest.skip("AIME 2025 data not found (set PACORE_DATA_DIR)")
    return problems


def sim_config(problems: list[Problem], **options: object) -> SimConfig:
    """The simulated model, knowing the benchmark's answers so that accuracy means something."""
    answers = {p.problem.strip(): p.answer for p in problems}
    return SimConfig(seed=11, answers=answers, think_words=8, record_requests=False, **options)  # type: ignore[arg-type]


def records_of(directory: Path) -> list[RunRecord]:
    return list(RunStore.open(directory, readonly=True).records())


# -- methods and settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label", "trajectories"),
    [
        ("pacore:low", "pacore:low", 5),
        ("pacore-medium", "pacore:medium", 17),
        ("pacore:high", "pacore:high", 37),
        ("pacore:[32,4]", "pacore:high", 37),
        ("pacore:[8, 2]", "pacore:[8,2]", 11),
        ("PaCoRe:4", "pacore:low", 5),
        ("single", "single", 1),
        ("sc@16", "sc@16", 16),
        ("bon@8", "bon@8", 8),
    ],
)
def test_methods_parse_to_canonical_labels(text: str, label: str, trajectories: int) -> None:
    spec = MethodSpec.parse(text)
    assert spec.label == label
    assert spec.trajectories == trajectories


@pytest.mark.parametrize("text", ["sc", "sc@0", "pacore:huge", "beam@4", "pacore"])
def test_bad_methods_say_what_is_accepted(text: str) -> None:
    with pytest.raises(UsageError, match=r"pacore:low|schedule|at least 1"):
        MethodSpec.parse(text)


def test_settings_are_checked_up_front() -> None:
    with pytest.raises(UsageError, match="given twice"):
        parse_methods(["pacore:[4]", "pacore:low"])
    with pytest.raises(UsageError, match="--pool-size 16"):
        BenchSettings("b", parse_methods(["sc@16"]), samples=1, pool_size=8)
    with pytest.raises(UsageError, match="samples"):
        BenchSettings("b", parse_methods(["single"]), samples=0)


def test_problems_load_by_name_or_file(aime: list[Problem], tmp_path: Path) -> None:
    name, some, fingerprint = load_problems("AIME-2025", ids=["aime2025_II_3", "aime2025_I_1"])
    assert name == "aime2025" and [p.id for p in some] == ["aime2025_II_3", "aime2025_I_1"]
    assert fingerprint == load_problems("aime2025", limit=2)[2]  # the whole file's, whatever the subset
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps({"id": "q1", "problem": "What is 6*7?", "answer": "42"}) + "\n")
    assert load_problems("mine", data=own)[1][0].answer == "42"
    with pytest.raises(UsageError, match="unknown benchmark"):
        load_problems("mine")
    with pytest.raises(UsageError, match="unknown problem id"):
        load_problems("aime2025", ids=["nope"])


# -- fresh runs ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fresh_run_grades_stores_and_resumes(aime: list[Problem], tmp_path: Path) -> None:
    problems = aime[:3]
    methods = parse_methods(["pacore:[4,2]", "sc@4", "single", "bon@4"])
    settings = BenchSettings("aime2025", methods, samples=2, max_in_flight=8)
    async with SimServer(sim_config(aime)) as server, OpenAIBackend(server.base_url) as backend:
        summary = await run_bench(settings, problems, backend, tmp_path)
        assert summary.complete and summary.recorded == 24 and not summary.failed
        served = server.engine.served
        assert served == 3 * 2 * (7 + 4 + 1 + 4)

        # A rerun does nothing; more samples run only the new ones.
        again = await run_bench(settings, problems, backend, tmp_path)
        assert (again.skipped, again.recorded) == (24, 0) and server.engine.served == served
        more = BenchSettings("aime2025", methods, samples=3, max_in_flight=8)
        widened = await run_bench(more, problems, backend, tmp_path)
        assert (widened.skipped, widened.recorded) == (24, 12)

        # Other settings in the same directory are refused.
        with pytest.raises(UsageError, match="different configuration"):
            await run_bench(
                BenchSettings("aime2025", methods, samples=2, seed=1), problems, backend, tmp_path
            )
        # A directory of an older run format is refused as such, before any setting is compared.
        config = tmp_path / "config.json"
        stored = config.read_text()
        config.write_text(json.dumps({**json.loads(stored), "version": 1}))
        with pytest.raises(UsageError, match="run format version 1, and this pacore writes version 2"):
            await run_bench(settings, problems, backend, tmp_path)
        config.write_text(stored)

    records = records_of(tmp_path)
    assert Counter(r.key for r in records).most_common(1)[0][1] == 1 and len(records) == 36
    by_id = {p.id: p for p in problems}
    for record in records:
        grading = record.info["grading"]
        assert record.correct == grading["correct"] and record.score in (0.0, 1.0)
        assert (record.predicted == by_id[record.problem_id].answer) == record.correct
        if record.method == "pacore:[4,2]":
            assert [len(r["correct"]) for r in grading["rounds"]] == [4, 2]  # messages graded: emergence
            assert record.result.schedule == [4, 2, 1]
        # Only the final trajectory keeps its text; every trajectory keeps its message and usage.
        assert record.result.final is not None and record.result.final.content
        assert all(t.content is None for t in record.result.trajectories)
        assert all(t.usage.completion_tokens > 0 for t in record.result.trajectories)
    # bon@4 is the oracle: at least as good as any of its samples, so at least single's accuracy overall.
    accuracy = {r.method: r.accuracy for r in summarize([tmp_path])}
    assert accuracy["bon@4"] >= accuracy["single"]


@pytest.mark.anyio
async def test_samples_are_independent_and_repeatable(aime: list[Problem], tmp_path: Path) -> None:
    problems = aime[:2]
    settings = BenchSettings("aime2025", parse_methods(["sc@4"]), samples=3)

    async def answers(directory: Path) -> dict[tuple[str, int], list[str | None]]:
        async with SimServer(sim_config(aime)) as server, OpenAIBackend(server.base_url) as backend:
            await run_bench(settings, problems, backend, directory)
        return {
            (r.problem_id, r.sample): [v["answer"] for v in r.result.info["votes"]]
            for r in records_of(directory)
        }

    first = await answers(tmp_path / "a")
    assert first == await answers(tmp_path / "b")  # seeded: a rerun elsewhere repeats every sample
    for problem in problems:
        votes = [first[(problem.id, s)] for s in range(3)]
        assert len({json.dumps(v) for v in votes}) > 1  # different seeds per sample


@pytest.mark.anyio
async def test_a_failed_item_is_recorded_and_retried_by_a_rerun(aime: list[Problem], tmp_path: Path) -> None:
    problems = aime[:2]
    settings = BenchSettings("aime2025", parse_methods(["single"]), samples=2, max_in_flight=1)
    faulty = sim_config(aime, faults=Faults(script=("bad_request",)))  # the first request: a 400
    async with SimServer(faulty) as server, OpenAIBackend(server.base_url) as backend:
        summary = await run_bench(settings, problems, backend, tmp_path)
    assert len(summary.failed) == 1 and summary.recorded == 3 and not summary.complete
    failed = read_failures(tmp_path)
    assert [(f.problem_id, f.sample) for f in failed] == [(problems[0].id, 0)]
    assert failed[0].error.status_code == 400 and failed[0].partial is not None
    assert summarize([tmp_path])[0].failed == 1

    async with SimServer(sim_config(aime)) as server, OpenAIBackend(server.base_url) as backend:
        retried = await run_bench(settings, problems, backend, tmp_path)
    assert (retried.skipped, retried.recorded, retried.failed) == (3, 1, [])
    assert len(records_of(tmp_path)) == 4
    assert summarize([tmp_path])[0].failed == 0  # the failure was retried successfully


@pytest.mark.anyio
async def test_budget_exhaustion_is_a_graded_outcome(aime: list[Problem], tmp_path: Path) -> None:
    from pacore_agent.budget import Budget

    settings = BenchSettings("aime2025", parse_methods(["pacore:low"]), samples=1, budget=Budget(max_calls=2))
    async with SimServer(sim_config(aime)) as server, OpenAIBackend(server.base_url) as backend:
        summary = await run_bench(settings, aime[:1], backend, tmp_path)
    assert summary.complete
    (record,) = records_of(tmp_path)
    assert record.error is not None and record.error.type == "BudgetExceeded"
    assert record.correct is False and record.result.calls == 2


@pytest.mark.anyio
async def test_a_usage_error_stops_the_run_instead_of_failing_every_item(
    aime: list[Problem], tmp_path: Path
) -> None:
    from pacore_agent.budget import Budget, Price

    budget = Budget(max_cost=1.0, prices={"another-model": Price(input=1.0, output=1.0)})
    settings = BenchSettings("aime2025", parse_methods(["single"]), samples=2, budget=budget)
    async with SimServer(sim_config(aime)) as server, OpenAIBackend(server.base_url) as backend:
        with pytest.raises(UsageError, match="price"):
            await run_bench(settings, aime[:3], backend, tmp_path)
    assert records_of(tmp_path) == [] and read_failures(tmp_path) == []


# -- pool evaluation -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.anyio
async def test_pool_evaluation_matches_fresh_runs(aime: list[Problem], tmp_path: Path) -> None:
    problems = aime[:8]
    methods = parse_methods(["pacore:low", "sc@4"])
    fresh = BenchSettings("aime2025", methods, samples=16, seed=1)
    pooled = BenchSettings("aime2025", methods, samples=16, seed=2, pool_size=64, pool_chunk=32)
    async with SimServer(sim_config(aime)) as server, OpenAIBackend(server.base_url) as backend:
        await run_bench(fresh, problems, backend, tmp_path / "fresh")
        server.engine.reset_stats()
        summary = await run_bench(pooled, problems, backend, tmp_path / "pool")
        assert summary.complete and summary.pool_parts == 16
        # The pool once (8 x 64), then only PaCoRe's final rounds (8 x 16): sc@4 makes no calls at all.
        assert server.engine.served == 8 * 64 + 8 * 16
        # A rerun with more samples reuses the pool.
        server.engine.reset_stats()
        more = BenchSettings("aime2025", methods, samples=17, seed=2, pool_size=64, pool_chunk=32)
        await run_bench(more, problems, backend, tmp_path / "pool")
        assert server.engine.served == 8

    reports = {(r.run, r.method): r for r in summarize([tmp_path / "fresh", tmp_path / "pool"])}
    for method in ("pacore:low", "sc@4"):
        a, b = reports[("fresh", method)], reports[("pool", method)]
        half_widths = ((a.ci_high - a.ci_low) / 2, (b.ci_high - b.ci_low) / 2)
        # The difference of the two estimates lies within its own 95% interval.
        assert abs(a.accuracy - b.accuracy) <= (half_widths[0] ** 2 + half_widths[1] ** 2) ** 0.5, (a, b)
        # TTC is counted honestly: drawn pool trajectories count as if run for the sample.
        assert b.calls == a.calls and b.ttc_k == pytest.approx(a.ttc_k, rel=0.15)

    by_id = {p.id: p for p in problems}
    for record in records_of(tmp_path / "pool"):
        assert record.result.info["protocol"] == "pool" and len(record.result.info["pool"]["drawn"]) == 4
        assert len(set(record.result.info["pool"]["drawn"])) == 4
        if record.method == "pacore:low":
            # Grading with the pooled grades equals grading from scratch.
            regraded = await grade_result(record.result, answer=by_id[record.problem_id].answer, attach=False)
            assert regraded.model_dump() == record.info["grading"]


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture
def sim_server(shared_dir: Path) -> Iterator[str]:
    """`pacore sim-server` in a subprocess, knowing the AIME answers, slow enough to be killed midway."""
    data = shared_dir / "data" / "aime2025.jsonl"
    if not data.is_file():
        pytest.skip("AIME 2025 data not found")
    with sim_server_process(
        "--seed", "3", "--think-words", "8", "--latency-median", "0.01", "--answers", str(data)
    ) as url:
        yield f"{url}/v1"


@pytest.mark.slow
def test_cli_bench_killed_midway_resumes_then_reports(sim_server: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    methods = ["-m", "pacore:low", "-m", "pacore:medium", "-m", "sc@4", "-m", "sc@16"]
    command = [
        *PACORE,
        "bench",
        "aime2025",
        *methods,
        "--samples",
        "4",
        "--problems",
        "5",
        "--out",
        str(out),
        "--base-url",
        sim_server,
        "--concurrency",
        "8",
    ]
    total = 5 * 4 * 4
    results = out / "results.jsonl"
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 100
        while not (results.is_file() and results.read_bytes().count(b"\n") >= 8):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    stored = results.read_bytes().count(b"\n")
    assert 8 <= stored < total  # killed midway

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stderr and f"of {total}" in resumed.stderr
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    keys = Counter((r["problem_id"], r["method"], r["sample"]) for r in lines)
    assert len(keys) == total and set(keys.values()) == {1}  # every item exactly once
    assert {m for _, m, _ in keys} == {"pacore:low", "pacore:medium", "sc@4", "sc@16"}

    # The configuration guard: a different seed in the same directory is refused.
    refused = subprocess.run([*command, "--seed", "9"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert refused.returncode == 2 and "different configuration" in " ".join(refused.stderr.split())

    table, plot = tmp_path / "table.csv", tmp_path / "scaling.png"
    report = run_pacore("report", str(out), "--csv", str(table), "--plot", str(plot), timeout=60)
    assert report.returncode == 0, report.stderr
    assert "pacore:medium" in report.stdout and "SIMULATED" in report.stdout
    with table.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0])[: len(CSV_COLUMNS)] == CSV_COLUMNS
    assert [r["method"] for r in rows] == ["sc@4", "sc@16", "pacore:low", "pacore:medium"]
    assert all(
        int(r["n"]) == 20 and 0 <= float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"]) <= 1
        for r in rows
    )
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


def test_cli_help_lists_the_options() -> None:
    done = run_pacore("bench", "--help", timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for option in ("--method", "--samples", "--out", "--data", "--base-url", "--model", "--pool-size"):
        assert option in text
    assert "oracle" in text


# -- the turnstile that memory.py motivated -----------------------------------------------------------


@pytest.mark.anyio
async def test_requests_start_a_slice_of_each_loop_iteration() -> None:
    """Hundreds of requests launched together start only as many per event-loop iteration as fit the
    limiter's time slice, not all in one (each start costs the client CPU: all in one iteration would
    stall the loop). Each start here costs 1 ms of a fake clock; the slice is 10 ms."""
    import anyio
    import anyio.lowlevel

    from pacore_agent import Coordinator, SimBackend
    from pacore_agent.backends.base import Completion, DeltaCallback, GenerationRequest
    from pacore_agent.backends.limiter import EndpointLimiter

    iteration = 0
    started: Counter[int] = Counter()
    now = [0.0]
    paced = EndpointLimiter(1000, time_slice=0.01, clock=lambda: now[0])

    class Recording(SimBackend):
        @property
        def limiter(self) -> EndpointLimiter:
            return paced

        async def generate(
            self, request: GenerationRequest, *, on_delta: DeltaCallback | None = None
        ) -> list[Completion]:
            started[iteration] += 1
            now[0] += 0.001
            return await super().generate(request, on_delta=on_delta)

    async def count_iterations() -> None:
        nonlocal iteration
        while True:
            await anyio.lowlevel.checkpoint()  # wakes once per loop iteration
            iteration += 1

    backend = Recording(SimConfig(think_words=4, record_requests=False), max_concurrency=1000)
    async with anyio.create_task_group() as group:
        group.start_soon(count_iterations)
        round_ = await Coordinator([300], backend).run_round("What is 6*7?", 300)
        group.cancel_scope.cancel()
    assert len(round_.messages) == 300 and sum(started.values()) == 300
    # The burst's first iteration starts one slice's worth (the 11th start begins at 10 ms); later ones
    # add the replacements of requests that ended (these simulated ones end at once).
    assert started[min(started)] <= 11
    assert len(started) >= 8 and max(started.values()) < 100
