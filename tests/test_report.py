"""Reports from a hand-made store: every figure checked against values worked out by hand."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pacore_agent.evaluation.bench import FAILURES_FILENAME, FailedItem
from pacore_agent.evaluation.report import (
    CSV_COLUMNS,
    MethodReport,
    bootstrap_interval,
    label_offsets,
    summarize,
    to_markdown,
    wilson_interval,
    write_csv,
)
from pacore_agent.evaluation.store import RunRecord, RunStore
from pacore_agent.results import ErrorInfo, RoundResult, SolveResult, Trajectory, Usage
from tests.helpers import graded_record, run_pacore


def make_record(
    problem_id: str,
    sample: int,
    correct: bool,
    *,
    method: str,
    tokens: int = 1000,
    calls: int = 1,
    wall: float = 1.0,
    given: list[bool] | None = None,
    benchmark: str = "aime2025",
) -> RunRecord:
    """A graded record: ``calls`` trajectories of ``tokens / calls`` completion tokens each; ``given`` is the
    correctness of the messages the final round received (PaCoRe)."""
    trajectories = [
        Trajectory(round=0, index=i, call=i, usage=Usage(prompt_tokens=7, completion_tokens=tokens // calls))
        for i in range(calls)
    ]
    result = SolveResult(
        method=method,
        problem=[{"role": "user", "content": problem_id}],
        answer="\\boxed{1}" if correct else "\\boxed{2}",
        rounds=[RoundResult(index=0, width=calls, trajectories=trajectories)],
        wall_s=wall,
    )
    grading = {
        "predicted": "1" if correct else "2",
        "score": float(correct),
        "correct": correct,
        "rounds": [] if given is None else [{"index": 0, "correct": given}],
        "emergent": given is not None and correct and not any(given),
    }
    return graded_record(result, grading, problem_id=problem_id, sample=sample, benchmark=benchmark)


WRONG = [False, False, False, False]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "hand"
    records = [
        # sc@4: p1 has 3 samples (2 right), p2 has 1 (wrong). Accuracy is the mean over problems of each
        # problem's mean: (2/3 + 0) / 2 = 1/3 (the plain mean over samples would be 1/2).
        make_record("p1", 0, True, method="sc@4", tokens=1000, calls=4, wall=1.0),
        make_record("p1", 1, True, method="sc@4", tokens=2000, calls=4, wall=2.0),
        make_record("p1", 2, False, method="sc@4", tokens=3000, calls=4, wall=3.0),
        make_record("p2", 0, False, method="sc@4", tokens=4000, calls=4, wall=4.0),
        # pacore:low: both problems at 1/2. Final rounds given only wrong messages: p1/0 (right anyway:
        # emergent), p1/1 and p2/1 (wrong): 1 of 3.
        make_record("p1", 0, True, method="pacore:low", tokens=5000, calls=5, given=WRONG),
        make_record("p1", 1, False, method="pacore:low", tokens=5000, calls=5, given=WRONG),
        make_record("p2", 0, True, method="pacore:low", tokens=5000, calls=5, given=[True, *WRONG[1:]]),
        make_record("p2", 1, False, method="pacore:low", tokens=5000, calls=5, given=WRONG),
        # single: one problem, 3 of 4 right: Wilson's interval.
        *(make_record("p1", s, s < 3, method="single", tokens=500) for s in range(4)),
        # Another benchmark is another row.
        make_record("h1", 0, True, method="single", benchmark="hmmt2025"),
    ]
    with RunStore.open(directory, config={"model": "some-model", "protocol": "fresh"}) as store:
        for record in records:
            assert store.append_sync(record)
    # Sample 0 failed once, then was done by a rerun: not an error any more.
    failures = [
        FailedItem(
            benchmark="aime2025",
            problem_id="p1",
            method="single",
            sample=sample,
            error=ErrorInfo(type="RoundFailedError", message="x"),
        )
        for sample in (4, 0)
    ]
    (directory / FAILURES_FILENAME).write_text("".join(f.model_dump_json() + "\n" for f in failures))
    return directory


def by_method(reports: list[MethodReport]) -> dict[tuple[str, str], MethodReport]:
    return {(r.benchmark, r.method): r for r in reports}


def test_figures_from_a_hand_made_store(run_dir: Path) -> None:
    reports = summarize([run_dir])
    assert [(r.benchmark, r.method) for r in reports] == [
        ("aime2025", "single"),
        ("aime2025", "sc@4"),
        ("aime2025", "pacore:low"),
        ("hmmt2025", "single"),
    ]
    rows = by_method(reports)

    sc = rows[("aime2025", "sc@4")]
    assert (sc.n, sc.problems) == (4, 2)
    assert sc.accuracy == pytest.approx(1 / 3)
    # Two problems with means 2/3 and 0: resampled accuracies are 0, 1/3, 2/3 with odds 1:2:1, so the
    # 2.5% and 97.5% order statistics of 2000 resamples are 0 and 2/3.
    assert (sc.ci_low, sc.ci_high) == (0.0, pytest.approx(2 / 3))
    assert sc.ttc_k == pytest.approx(3.0)  # (mean(1, 2, 3) + 4) / 2 thousand tokens
    assert sc.calls == 4.0 and sc.wall_s == pytest.approx(3.0)  # (mean(1, 2, 3) + 4) / 2 seconds
    assert (sc.synth_all_wrong, sc.emergent, sc.emergent_rate, sc.failed) == (0, 0, None, 0)
    assert sc.completed_accuracy == pytest.approx(1 / 3)  # nothing failed: the same

    pacore = rows[("aime2025", "pacore:low")]
    assert pacore.accuracy == 0.5 and (pacore.ci_low, pacore.ci_high) == (0.5, 0.5)  # no spread over problems
    assert pacore.ttc_k == 5.0 and pacore.calls == 5.0
    assert (pacore.synth_all_wrong, pacore.emergent) == (3, 1)
    assert pacore.emergent_rate == pytest.approx(1 / 3)

    single = rows[("aime2025", "single")]
    # Sample 4 failed and was not retried: it is a wrong sample, 3 right of 5; 3 of 4 completed.
    assert (single.n, single.failed, single.accuracy, single.problems) == (5, 1, 0.6, 1)
    assert single.completed_accuracy == 0.75
    assert (single.ci_low, single.ci_high) == wilson_interval(3, 5)  # one problem: Wilson over 5 samples
    assert single.ttc_k == 0.5  # over the samples with a trace (the failure kept none)

    assert rows[("hmmt2025", "single")].accuracy == 1.0
    assert {r.model for r in reports} == {"some-model"} and not any(r.simulated for r in reports)


def ungraded_record(problem_id: str, sample: int, *, method: str, status: str) -> RunRecord:
    """A stored sample whose grader timed out or erred: no grade at all (``correct`` is None)."""
    record = make_record(problem_id, sample, False, method=method)
    grading = {"predicted": "2", "score": 0.0, "correct": None, "status": status, "error": f"grader {status}"}
    return record.model_copy(update={"correct": None, "score": None, "info": {"grading": grading}})


def failure(problem_id: str, sample: int, method: str) -> FailedItem:
    return FailedItem(
        benchmark="aime2025",
        problem_id=problem_id,
        method=method,
        sample=sample,
        error=ErrorInfo(
            type="RoundFailedError", message="every trajectory of round 0 failed", status_code=503
        ),
    )


def test_failed_and_ungraded_samples_count_as_wrong(tmp_path: Path) -> None:
    """The hand-made run of issue 12: known failures, ungradable samples, right and wrong answers."""
    method = "pacore:low"
    records = [
        make_record("p1", 0, True, method=method),
        make_record("p1", 1, False, method=method),
        ungraded_record("p1", 3, method=method, status="error"),
        make_record("p2", 0, True, method=method),
        make_record("p2", 1, True, method=method),
        ungraded_record("p2", 2, method=method, status="timeout"),
    ]
    failures = [failure("p1", 2, method), failure("p3", 0, method), failure("p3", 1, method)]
    directory = tmp_path / "honest"
    with RunStore.open(directory, config={"model": "m", "protocol": "fresh"}) as store:
        for record in records:
            store.append_sync(record)
    (directory / FAILURES_FILENAME).write_text("".join(f.model_dump_json() + "\n" for f in failures))

    (report,) = summarize([directory])
    # Every sample asked for: p1 has 4 (right, wrong, failed, ungraded), p2 has 3 (right, right,
    # ungraded), p3 has 2 (both failed).
    assert (report.n, report.problems, report.failed, report.ungraded) == (9, 3, 3, 2)
    # Per problem: p1 1/4, p2 2/3, p3 0; their mean (1/4 + 2/3 + 0) / 3 = 11/36.
    assert report.accuracy == pytest.approx(11 / 36)
    # Completed and graded only: p1 1/2, p2 2/2, p3 has none and drops out: (1/2 + 1) / 2 = 3/4.
    assert report.completed_accuracy == pytest.approx(3 / 4)
    # The interval resamples the same per-problem means (1/4, 2/3, 0): the lowest resampled mean, 0 (p3
    # three times), and the highest, 2/3 (p2 three times), each come up with odds 1/27 = 3.7% > 2.5%,
    # so they are the 2.5% and 97.5% order statistics.
    assert (report.ci_low, report.ci_high) == (0.0, pytest.approx(2 / 3))
    assert report.ci_low <= report.accuracy <= report.ci_high
    # The interval is not the completed-only one, whose problem means are 1/2 and 1.
    assert bootstrap_interval([[1.0, 0.0], [1.0, 1.0]]) == (0.5, 1.0)
    assert report.score == pytest.approx(11 / 36)  # math: the score is the grade

    markdown = to_markdown([report])
    assert "| aime2025 | pacore:low | 9 | 30.6 [0.0, 66.7] | 3 | 2 | 75.0 |" in markdown
    assert "failed and ungraded samples counted as wrong" in markdown
    path = write_csv([report], tmp_path / "honest.csv")
    with path.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert {
        k: row[k] for k in ("n", "accuracy", "ci_low", "ci_high", "failed", "ungraded", "completed_accuracy")
    } == {
        "n": "9",
        "accuracy": "0.305556",
        "ci_low": "0.0",
        "ci_high": "0.666667",
        "failed": "3",
        "ungraded": "2",
        "completed_accuracy": "0.75",
    }


def test_csv_and_markdown(run_dir: Path, tmp_path: Path) -> None:
    reports = summarize([run_dir])
    path = write_csv(reports, tmp_path / "table.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    sc = next(r for r in rows if r["method"] == "sc@4")
    assert {
        k: sc[k] for k in ("benchmark", "n", "accuracy", "ci_low", "ci_high", "ttc_k", "calls", "wall_s")
    } == {
        "benchmark": "aime2025",
        "n": "4",
        "accuracy": "0.333333",
        "ci_low": "0.0",
        "ci_high": "0.666667",
        "ttc_k": "3.0",
        "calls": "4.0",
        "wall_s": "3.0",
    }
    assert sc["emergent_rate"] == "" and sc["run"] == "hand"
    pacore = next(r for r in rows if r["method"] == "pacore:low")
    assert (pacore["synth_all_wrong"], pacore["emergent"], pacore["emergent_rate"]) == ("3", "1", "0.333333")

    markdown = to_markdown(reports)
    assert (
        "| aime2025 | sc@4 | 4 | 33.3 [0.0, 66.7] | 0 | 0 | 33.3 | 3.00 | 4.0 | 3.00 | - | 0 | 0 |"
        in markdown
    )
    assert (
        "| aime2025 | pacore:low | 4 | 50.0 [50.0, 50.0] | 0 | 0 | 50.0 | 5.00 | 5.0 | 1.00 | 1/3 (33%) | 0 | 0 |"
        in markdown
    )
    single = next(r for r in rows if r["method"] == "single" and r["benchmark"] == "aime2025")
    assert (single["n"], single["failed"], single["accuracy"], single["completed_accuracy"]) == (
        "5",
        "1",
        "0.6",
        "0.75",
    )
    assert "problem-clustered" in markdown


def test_rows_sort_by_family_then_compute_with_blind_after_pacore(tmp_path: Path) -> None:
    methods = ["pacore-blind:[16]", "pacore:[16]", "sc@16", "pacore-blind:[4]", "pacore:[4]", "single"]
    with RunStore.open(tmp_path / "run", config={"model": "m", "protocol": "fresh"}) as store:
        for method in methods:
            store.append_sync(make_record("p1", 0, True, method=method))
    reports = summarize([tmp_path / "run"])
    assert [r.method for r in reports] == [
        "single",
        "sc@16",
        "pacore:[4]",
        "pacore:[16]",
        "pacore-blind:[4]",
        "pacore-blind:[16]",
    ]


def test_intervals() -> None:
    assert bootstrap_interval([[1.0], [0.0]]) == (0.0, 1.0)
    assert bootstrap_interval([[1, 0], [0, 1], [1, 1, 0, 0]]) == (0.5, 0.5)
    spread = [[1.0]] * 50 + [[0.0]] * 50
    low, high = bootstrap_interval(spread)
    # 100 problems at 0 or 1: close to the normal interval 0.5 +- 1.96 * 0.05.
    assert low == pytest.approx(0.402, abs=0.02) and high == pytest.approx(0.598, abs=0.02)
    assert bootstrap_interval(spread, seed=3) == bootstrap_interval(spread, seed=3)
    assert bootstrap_interval([[1, 1, 1, 0]]) == wilson_interval(3, 4)  # one problem: Wilson over samples
    assert wilson_interval(0, 10)[1] == pytest.approx(0.27753, abs=1e-5)


def test_cli_report_writes_table_csv_markdown_and_plot(run_dir: Path, tmp_path: Path) -> None:
    table, plot, markdown = tmp_path / "t.csv", tmp_path / "p.png", tmp_path / "t.md"
    done = run_pacore(
        "report",
        str(run_dir),
        "--csv",
        str(table),
        "--plot",
        str(plot),
        "--markdown",
        str(markdown),
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert "sc@4" in done.stdout and "33.3 [0.0, 66.7]" in done.stdout
    assert table.read_text().startswith(",".join(CSV_COLUMNS))
    assert "| aime2025 | sc@4 |" in markdown.read_text()
    assert plot.read_bytes()[:4] == b"\x89PNG" and plot.stat().st_size > 20_000

    printed = run_pacore("report", str(run_dir), "--markdown", "-", timeout=60)
    assert printed.stdout.startswith("**PaCoRe benchmark report")

    empty = run_pacore("report", str(tmp_path / "nothing"), timeout=60)
    assert empty.returncode == 2 and "holds no benchmark results" in empty.stderr


def test_labels_of_coinciding_points_are_stacked() -> None:
    # Two methods at the same compute and accuracy, a third close by, a fourth far away.
    points = [(2.0, 60.0), (2.0, 60.0), (2.02, 61.0), (3.5, 60.0)]
    offsets = label_offsets(points, x_span=2.0, y_span=100.0)
    assert offsets == [5, 15, 25, 5]
    assert label_offsets([(1.0, 10.0), (1.5, 10.0)], x_span=1.0, y_span=100.0) == [5, 5]
