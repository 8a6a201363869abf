"""Synthesis diagnostics on hand-made runs, where every figure is known by construction."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from pacore_agent.evaluation.analyze import (
    MARKER_PATTERNS,
    Rate,
    Synthesis,
    analyze,
    blind_gaps,
    classify,
    count_markers,
    mentions,
    syntheses_of,
    to_markdown,
    write_csv,
)
from pacore_agent.evaluation.report import bootstrap_interval, load_run
from pacore_agent.evaluation.store import RunRecord, RunStore
from pacore_agent.exceptions import UsageError
from pacore_agent.results import RoundResult, SolveResult, Trajectory, Usage

PACORE = [sys.executable, "-m", "pacore_agent.cli"]
REPO = Path(__file__).resolve().parents[1]


def boxed(answer: str) -> str:
    return f"The answer is $\\boxed{{{answer}}}$."


def make_record(
    problem_id: str,
    messages: list[tuple[str, bool]],
    answer: str,
    correct: bool,
    *,
    text: str = "",
    method: str = "pacore:[3]",
    sample: int = 0,
    tokens: int = 100,
) -> RunRecord:
    """A graded two-round record: ``messages`` (answer, right?) are the first round, then one synthesis whose
    full text is ``text`` followed by its boxed ``answer``."""
    first = RoundResult(
        index=0,
        width=len(messages),
        trajectories=[
            Trajectory(round=0, index=i, message=boxed(a), usage=Usage(completion_tokens=tokens))
            for i, (a, _) in enumerate(messages)
        ],
        order=list(range(len(messages))),
        messages=[boxed(a) for a, _ in messages],
    )
    final = Trajectory(
        round=1,
        index=0,
        content=f"<think>{text}</think>{boxed(answer)}",
        usage=Usage(completion_tokens=tokens),
    )
    final = final.model_copy(update={"message": boxed(answer)})
    slim = final.model_copy(update={"content": None})  # what the store keeps of a round's trajectories
    result = SolveResult(
        method=method,
        problem=[{"role": "user", "content": problem_id}],
        answer=boxed(answer),
        final=final,
        rounds=[
            first,
            RoundResult(index=1, width=1, trajectories=[slim], order=[0], messages=[boxed(answer)]),
        ],
    )
    grading = {
        "predicted": answer,
        "score": float(correct),
        "correct": correct,
        "rounds": [{"index": 0, "correct": [ok for _, ok in messages]}],
    }
    return RunRecord(
        benchmark="aime2025",
        problem_id=problem_id,
        method=method,
        sample=sample,
        result=result,
        predicted=answer,
        correct=correct,
        score=float(correct),
        info={"grading": grading},
    )


# The right answer of every problem is 5.
COPIES_PLURALITY = make_record(
    "p1", [("5", True), ("5", True), ("7", False)], "5", True, text="Most say five."
)
RIGHT_AGAINST_ALL_WRONG = make_record(
    "p2", [("7", False), ("7", False), ("8", False)], "5", True, text="Recomputing from scratch."
)
CITES_MESSAGE_2 = make_record(
    "p3",
    [("5", True), ("7", False), ("7", False)],
    "5",
    True,
    text="However, in message 2 the sign is lost, so I cross-check the first.",
)
WRONG_AND_NOVEL = make_record("p4", [("5", True), ("5", True), ("7", False)], "9", False, text="Guessing.")
HAND_MADE = [COPIES_PLURALITY, RIGHT_AGAINST_ALL_WRONG, CITES_MESSAGE_2, WRONG_AND_NOVEL]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "hand"
    with RunStore.open(directory, config={"model": "m", "protocol": "fresh"}) as store:
        for record in HAND_MADE:
            assert store.append_sync(record)
    return directory


def flags_of(record: RunRecord) -> dict[str, object]:
    (synthesis,) = syntheses_of(record)
    flags = classify(synthesis)
    return {
        name: getattr(flags, name)
        for name in ("all_wrong", "emergent", "plurality_right", "shortcut", "novel", "correct", "markers")
    } | {"use": (flags.mentioned_messages, flags.answered_messages)}


def test_each_hand_made_synthesis_is_classified_as_built() -> None:
    base = {"all_wrong": False, "emergent": False, "markers": 0}
    assert flags_of(COPIES_PLURALITY) == base | {
        "plurality_right": True,
        "shortcut": True,
        "novel": False,
        "correct": True,
        "use": (2, 3),  # its own 5 mentions both fives, not the 7
    }
    assert flags_of(RIGHT_AGAINST_ALL_WRONG) == base | {
        "all_wrong": True,
        "emergent": True,
        "plurality_right": False,
        "shortcut": False,
        "novel": True,
        "correct": True,
        "use": (0, 3),
    }
    assert flags_of(CITES_MESSAGE_2) == base | {
        "plurality_right": False,
        "shortcut": False,
        "novel": False,
        "correct": True,
        "markers": 2,  # "message 2", "cross-check"
        "use": (1, 3),  # the 5 (its own answer); the sevens are not written out
    }
    assert flags_of(WRONG_AND_NOVEL) == base | {
        "plurality_right": True,
        "shortcut": False,
        "novel": True,
        "correct": False,
        "use": (0, 3),
    }


def test_aggregates_of_a_hand_made_run(run_dir: Path) -> None:
    (item,) = analyze([run_dir])
    assert (item.benchmark, item.method, item.blind, item.records, item.analysed) == (
        "aime2025",
        "pacore:[3]",
        False,
        4,
        4,
    )
    d = item.diagnostics
    assert d.syntheses == 4 and d.full_text == 4
    assert d.emergent == Rate(1, 1)
    assert d.shortcut == Rate(1, 4) and d.plurality_right == Rate(2, 4)
    assert d.novel_right == Rate(1, 4) and d.novel_wrong == Rate(1, 4)
    assert d.recovery == Rate(2, 2)  # p2 and p3: plurality 7 wrong, synthesis right
    assert d.damage == Rate(1, 2)  # p4: plurality 5 right, synthesis 9
    assert d.markers == Rate(1, 4) and d.marker_mean.value == 0.5
    assert d.message_use == Rate(3, 12)
    assert str(d.shortcut) == "1/4 (25%)" and str(d.marker_mean) == "0.50 (n=4)"
    metrics = d.metrics("synthesis/")
    assert metrics["synthesis/shortcut"] == 0.25 and metrics["synthesis/emergent"] == 1.0


def test_markers_are_configurable_and_checked() -> None:
    text = "Reference 12 and Ref 3 agree, unlike ref. 4; the other solutions and these messages; Response #5."
    assert count_markers(text) == 6
    assert count_markers("I refer to prior work; referee reports; preference; 3 messages.") == 0
    assert count_markers("Cross-checking, crosscheck, cross check.") == 3
    assert count_markers("However, in message 2 ...", ["however"]) == 1
    (synthesis,) = syntheses_of(CITES_MESSAGE_2)
    assert classify(synthesis, markers=[r"\bsign\b"]).markers == 1
    with pytest.raises(UsageError, match="--markers"):
        count_markers("x", ["("])
    assert "cross" in " ".join(MARKER_PATTERNS)


def test_mentions_match_whole_answers_only() -> None:
    assert mentions("so 15 is wrong and 5 is right.", "5")
    assert not mentions("so 15 and 0.5 and 5.5", "5")
    assert mentions("gives \\frac{1}{2} again", "\\frac{1}{2}")


def test_intermediate_rounds_are_read_from_their_messages() -> None:
    record = make_record("p5", [("5", True), ("7", False)], "5", True, method="pacore:[2,2]")
    first, last = record.result.rounds
    middle = RoundResult(
        index=1,
        width=2,
        trajectories=[Trajectory(round=1, index=i, message=boxed(a)) for i, a in enumerate(["7", "5"])],
        order=[1, 0],  # reference order: the 5 first
        messages=[boxed("5"), boxed("7")],
    )
    last = last.model_copy(update={"index": 2})
    record.result.rounds = [first, middle, last]
    record.info["grading"]["rounds"].append({"index": 1, "correct": [True, False]})
    found = syntheses_of(record)
    assert [(s.answer, s.correct, s.full_text) for s in found] == [
        ("5", True, False),
        ("7", False, False),
        ("5", True, True),
    ]
    assert found[2].message_answers == ("5", "7")  # the final round got round 1's messages


def test_blind_gap_pairs_methods_of_equal_schedule(tmp_path: Path) -> None:
    directory = tmp_path / "gap"
    wrong = [("7", False), ("7", False), ("5", True)]
    records = []
    # PaCoRe right on p1 (both samples) and p2 (one of two); blind right on p2 only: per-problem gaps 1
    # and 0, so the gap is 0.5.
    for problem, pacore, blind in (
        ("p1", [True, True], [False, False]),
        ("p2", [True, False], [True, False]),
    ):
        for sample in range(2):
            for method, right in (("pacore:[3]", pacore[sample]), ("pacore-blind:[3]", blind[sample])):
                answer = "5" if right else "7"
                records.append(make_record(problem, wrong, answer, right, method=method, sample=sample))
    with RunStore.open(directory) as store:
        for record in records:
            store.append_sync(record)
    (gap,) = blind_gaps([load_run(directory)], resamples=500, seed=1)
    assert (gap.pacore, gap.blind, gap.problems, gap.samples) == ("pacore:[3]", "pacore-blind:[3]", 2, (4, 4))
    assert gap.pacore_accuracy == 0.75 and gap.blind_accuracy == 0.25 and gap.gap == 0.5
    assert (gap.ci_low, gap.ci_high) == bootstrap_interval([[1.0], [0.0]], resamples=500, seed=1)
    items = {i.method: i for i in analyze([directory])}
    assert items["pacore-blind:[3]"].blind and not items["pacore:[3]"].blind
    assert "PaCoRe minus blind" in to_markdown(list(items.values()), [gap])


def test_csv_carries_counts(run_dir: Path, tmp_path: Path) -> None:
    path = write_csv(analyze([run_dir]), tmp_path / "d.csv")
    with path.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["shortcut"], row["shortcut_count"], row["shortcut_total"]) == ("0.25", "1", "4")
    assert (row["marker_mean"], row["marker_mean_count"], row["marker_mean_total"]) == ("0.5", "2.0", "4")


def test_synthesis_needs_one_grade_per_answer() -> None:
    with pytest.raises(UsageError):
        Synthesis(("1",), (), "1", True, "")


def test_cli_analyze_writes_table_markdown_csv(run_dir: Path, tmp_path: Path) -> None:
    md, table = tmp_path / "d.md", tmp_path / "d.csv"
    done = subprocess.run(
        [*PACORE, "analyze", str(run_dir), "--md", str(md), "--csv", str(table)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    assert "majority shortcut" in done.stdout and "1/4 (25%)" in done.stdout
    assert "| aime2025 | pacore:[3] | 4 (4/4 records) | 1/1 (100%) | 1/4 (25%) |" in md.read_text()
    assert table.read_text().startswith("run,benchmark,method,blind")
    bad = subprocess.run(
        [*PACORE, "analyze", str(run_dir), "--markers", "("],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "--markers" in bad.stderr
