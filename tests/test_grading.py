"""The one message grader: statuses that never pass a broken grader off as a wrong answer, and truncation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacore_agent import OpenAIBackend, SimConfig, SimServer, UsageError
from pacore_agent.evaluation import answers
from pacore_agent.evaluation.answers import math_verdict, shutdown_math_workers
from pacore_agent.evaluation.bench import BenchSettings, BenchSummary, parse_methods, read_failures, run_bench
from pacore_agent.evaluation.datasets import Problem
from pacore_agent.evaluation.grading import GraderUnavailableError, grade_message, grade_result
from pacore_agent.evaluation.report import summarize
from pacore_agent.evaluation.store import RunStore
from pacore_agent.results import RoundResult, SolveResult, Trajectory

# A stand-in for math-verify that fails the way a broken install or a crashing sympy does: the worker
# process imports it instead of the real one (PYTHONPATH), so everything above it runs for real.
FAKE_MATH_VERIFY = """
import os, signal

def parse(text, **kwargs):
    return [text]

def verify(gold, pred, **kwargs):
    if "7" in pred[0]:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-grade
    if "5" in pred[0]:
        raise ValueError("simulated sympy failure")
    return gold == pred
"""

BROKEN_MATH_VERIFY = 'raise ImportError("simulated broken install of math-verify")\n'


def fake_math_verify(directory: Path, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    package = directory / "math_verify"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(directory))
    shutdown_math_workers()  # idle workers run the real math-verify; the next call starts a fake one


@pytest.fixture(autouse=True)
def _fresh_workers() -> Iterator[None]:
    yield
    shutdown_math_workers()  # no fake worker outlives its test
    with answers._cache_lock:  # nor any verdict a fake gave
        answers._cache.clear()


def test_a_dying_or_raising_grader_yields_error_statuses_never_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_math_verify(tmp_path, FAKE_MATH_VERIFY, monkeypatch)
    # sqrt(k) against sqrt(2) is no cheap comparison: it goes to the worker.
    died = grade_message("So the answer is \\boxed{\\sqrt{7}}.", answer="\\sqrt{2}")
    assert (died.status, died.correct, died.score, died.graded) == ("error", None, 0.0, False)
    assert died.error is not None and "died" in died.error and died.predicted == "\\sqrt{7}"
    raised = grade_message("\\boxed{\\sqrt{5}}", answer="\\sqrt{2}")
    assert (raised.status, raised.correct) == ("error", None)
    assert raised.error is not None and "ValueError: simulated sympy failure" in raised.error
    wrong = grade_message("\\boxed{\\sqrt{3}}", answer="\\sqrt{2}")  # the restarted worker still grades
    assert (wrong.status, wrong.correct, wrong.score) == ("graded", False, 0.0)
    assert math_verdict("\\sqrt{7}", "\\sqrt{2}").status == "error"


def test_a_timeout_is_a_status_not_a_wrong_answer() -> None:
    tower = "2^{2^{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}}"
    assert math_verdict("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}").equal is True  # a warm worker
    verdict = math_verdict(tower, "1", timeout=1.0)
    assert (verdict.status, verdict.equal) == ("timeout", None) and "1 s" in (verdict.error or "")


def test_a_grader_that_cannot_start_raises_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_math_verify(tmp_path, BROKEN_MATH_VERIFY, monkeypatch)
    with pytest.raises(GraderUnavailableError, match=r"did not start.*simulated broken install"):
        grade_message("\\boxed{\\sqrt{13}}", answer="\\sqrt{2}")  # a pair no test has cached
    # Cheap comparisons need no worker and still grade.
    assert grade_message("\\boxed{12}", answer="12").correct is True


@pytest.mark.anyio
async def test_grade_result_records_the_status_of_answer_and_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_math_verify(tmp_path, FAKE_MATH_VERIFY, monkeypatch)
    first = RoundResult(
        index=0,
        width=2,
        trajectories=[
            Trajectory(round=0, index=0, content="\\boxed{\\sqrt{5}}"),
            Trajectory(round=0, index=1),
        ],
        order=[0, 1],
        messages=["\\boxed{\\sqrt{5}}", "\\boxed{\\sqrt{3}}"],
    )
    final = Trajectory(round=1, index=0, content="\\boxed{\\sqrt{7}}")
    result = SolveResult(
        method="pacore[2]",
        problem=[{"role": "user", "content": "x"}],
        answer="\\boxed{\\sqrt{7}}",
        final=final,
        rounds=[first, RoundResult(index=1, width=1, trajectories=[final])],
    )
    grading = await grade_result(result, answer="\\sqrt{2}")
    assert (grading.status, grading.correct, grading.score) == ("error", None, 0.0)
    assert grading.error is not None and "died" in grading.error
    assert grading.rounds[0].correct == [None, False]  # the raising message is ungraded, not wrong
    assert not grading.emergent
    assert result.info["grading"]["status"] == "error"


async def bench_one_root(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    math_verify: str,
    n: int,
    methods: list[str],
    samples: int,
) -> BenchSummary:
    """`run_bench` of "What is sqrt(n)?" graded by a fake math-verify (``math_verify``: its source).

    The simulated model answers sqrt(n) when right (and it always is): only that answer reaches the
    fake grader.
    """
    problem = Problem(id="q1", problem=f"What is sqrt({n})?", answer="\\sqrt{2}")
    config = SimConfig(seed=1, answers={problem.problem: f"\\sqrt{{{n}}}"}, accuracy=1.0, think_words=4)
    settings = BenchSettings("mine", parse_methods(methods), samples=samples)
    fake_math_verify(tmp_path / "fake", math_verify, monkeypatch)
    async with SimServer(config) as server, OpenAIBackend(server.base_url) as backend:
        return await run_bench(settings, [problem], backend, tmp_path / "run")


@pytest.mark.anyio
async def test_a_bench_run_records_ungraded_samples_and_the_report_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The point is that no sample graded by the dying grader reads as wrong.
    summary = await bench_one_root(tmp_path, monkeypatch, FAKE_MATH_VERIFY, 7, ["single"], samples=3)
    assert summary.complete and read_failures(tmp_path / "run") == []
    records = list(RunStore.open(tmp_path / "run", readonly=True).records())
    assert len(records) == 3
    for record in records:
        assert record.correct is None and record.info["grading"]["status"] == "error"
    (report,) = summarize([tmp_path / "run"])
    assert (report.n, report.ungraded, report.accuracy, report.completed_accuracy) == (3, 3, 0.0, None)


@pytest.mark.anyio
async def test_a_bench_run_stops_when_the_grader_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(GraderUnavailableError, match="simulated broken install"):
        await bench_one_root(tmp_path, monkeypatch, BROKEN_MATH_VERIFY, 17, ["single", "sc@2"], samples=2)
    # Nothing was recorded as wrong, and nothing was recorded as a failure to retry either.
    assert list(RunStore.open(tmp_path / "run", readonly=True).records()) == []
    assert read_failures(tmp_path / "run") == []


def test_a_sandbox_that_cannot_run_the_program_is_an_error_not_a_failed_test(tmp_path: Path) -> None:
    from pacore_agent.evaluation.sandbox import SandboxConfig

    program = "```python\nprint(42)\n```"
    tests = [{"input": "", "output": "42\n"}]
    assert grade_message(program, tests=tests).correct is True
    broken = grade_message(program, tests=tests, sandbox=SandboxConfig(python=str(tmp_path / "no-python")))
    assert (broken.status, broken.correct, broken.score) == ("error", None, 0.0)
    assert broken.error is not None and "sandbox failed on test 0" in broken.error


def test_bad_grading_arguments_say_what_to_change() -> None:
    with pytest.raises(UsageError, match="reference answer"):
        grade_message("\\boxed{1}")
    with pytest.raises(UsageError, match="truncation="):
        grade_message("\\boxed{1}", answer="1", truncation="drop")  # type: ignore[arg-type]


# -- truncation ------------------------------------------------------------------------------------

CUT = "<think>Let me try 6 * 7 = \\boxed{42}. Hmm wait, that ignores the carry, so"  # no </think>: C keeps it all


def test_a_truncated_response_with_a_box_in_its_reasoning_earns_zero_by_default() -> None:
    assert grade_message(CUT, answer="42", finish_reason="stop").correct is True  # the hole the rule closes
    zero = grade_message(CUT, answer="42", finish_reason="length")
    assert (zero.score, zero.correct, zero.truncated, zero.masked, zero.status) == (
        0.0,
        False,
        True,
        False,
        "graded",
    )
    masked = grade_message(CUT, answer="42", finish_reason="length", truncation="mask")
    assert (masked.score, masked.correct, masked.masked, masked.graded) == (0.0, None, True, False)
    graded = grade_message(CUT, answer="42", finish_reason="length", truncation="grade")
    assert (graded.score, graded.correct, graded.truncated) == (1.0, True, True)
    code = grade_message(CUT, tests=[{"input": "", "output": "42\n"}], finish_reason="length")
    assert (code.score, code.correct, code.truncated) == (0.0, False, True)


@pytest.mark.anyio
async def test_grade_result_applies_the_truncation_rule_to_answer_and_messages() -> None:
    first = RoundResult(
        index=0,
        width=2,
        trajectories=[
            Trajectory(round=0, index=0, content=CUT, finish_reason="length"),
            Trajectory(round=0, index=1, content="\\boxed{41}", finish_reason="stop"),
        ],
        order=[1, 0],
        messages=["\\boxed{41}", CUT],
    )
    final = Trajectory(round=1, index=0, content=CUT, finish_reason="length")
    result = SolveResult(
        method="pacore[2]",
        problem=[{"role": "user", "content": "6 * 7?"}],
        answer=CUT,
        final=final,
        rounds=[first, RoundResult(index=1, width=1, trajectories=[final])],
    )
    zero = await grade_result(result, answer="42", attach=False)
    assert (zero.correct, zero.truncated, zero.rounds[0].correct) == (False, True, [False, False])
    graded = await grade_result(result, answer="42", attach=False, truncation="grade")
    assert (graded.correct, graded.truncated, graded.rounds[0].correct) == (True, True, [False, True])


@pytest.mark.anyio
async def test_a_bench_run_counts_truncated_answers(tmp_path: Path) -> None:
    from pacore_agent.backends.base import SamplingParams

    problem = Problem(id="q1", problem="What is 6*7?", answer="42")
    config = SimConfig(seed=1, answers={problem.problem: "42"}, accuracy=1.0, think_words=40)
    cut = BenchSettings("mine", parse_methods(["single"]), samples=2, sampling=SamplingParams(max_tokens=8))
    whole = BenchSettings("mine", parse_methods(["single"]), samples=2)
    async with SimServer(config) as server, OpenAIBackend(server.base_url) as backend:
        await run_bench(cut, [problem], backend, tmp_path / "cut")
        await run_bench(whole, [problem], backend, tmp_path / "whole")
    (report,) = summarize([tmp_path / "cut"])
    assert (report.n, report.truncated, report.accuracy) == (2, 2, 0.0)
    (report,) = summarize([tmp_path / "whole"])
    assert (report.n, report.truncated, report.accuracy) == (2, 0, 1.0)
    with pytest.raises(UsageError, match="'zero' or 'grade'"):
        BenchSettings("mine", parse_methods(["single"]), samples=1, truncation="mask")
