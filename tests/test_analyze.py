"""Synthesis diagnostics on hand-made runs, where every figure is known by construction."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import anyio
import pytest

from pacore_agent.backends.sim import SimBackend, SimConfig, SimEngine
from pacore_agent.evaluation.analyze import (
    MARKER_PATTERNS,
    Rate,
    Synthesis,
    analyze,
    blind_gaps,
    classify,
    count_markers,
    mentions,
    plurality,
    syntheses_of,
    to_markdown,
    write_csv,
)
from pacore_agent.evaluation.bench import BenchSettings, MethodSpec, load_problems, parse_methods, run_bench
from pacore_agent.evaluation.datasets import DatasetUnavailableError, Problem
from pacore_agent.evaluation.report import bootstrap_interval, load_run, summarize
from pacore_agent.evaluation.store import FailedItem, RunRecord, RunStore, append_failure
from pacore_agent.exceptions import UsageError
from pacore_agent.prompts import blind_prompt
from pacore_agent.results import ErrorInfo, RoundResult, SolveResult, Trajectory, Usage
from tests.helpers import graded_record, run_pacore


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
    return graded_record(result, grading, problem_id=problem_id, sample=sample)


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

    # A failed PaCoRe sample counts as wrong, as in the report: p1 now has 2 right of 3 asked.
    append_failure(
        directory,
        FailedItem(
            benchmark="aime2025",
            problem_id="p1",
            method="pacore:[3]",
            sample=2,
            error=ErrorInfo(type="RoundFailedError", message="x"),
        ),
    )
    (gap,) = blind_gaps([load_run(directory)], resamples=500, seed=1)
    assert gap.samples == (5, 4)
    assert gap.pacore_accuracy == pytest.approx((2 / 3 + 0.5) / 2)
    (report,) = [r for r in summarize([directory]) if r.method == "pacore:[3]"]
    assert report.accuracy == pytest.approx(gap.pacore_accuracy)


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
    done = run_pacore("analyze", str(run_dir), "--md", str(md), "--csv", str(table), timeout=90)
    assert done.returncode == 0, done.stderr
    assert "majority shortcut" in done.stdout and "1/4 (25%)" in done.stdout
    assert "| aime2025 | pacore:[3] | 4 (4/4 records) | 1/1 (100%) | 1/4 (25%) |" in md.read_text()
    assert table.read_text().startswith("run,benchmark,method,blind")
    bad = run_pacore("analyze", str(run_dir), "--markers", "(", timeout=60)
    assert bad.returncode == 2 and "--markers" in bad.stderr
    own = run_pacore(
        "analyze", str(run_dir), "--markers", "five", "--markers", "scratch", "--csv", str(table), timeout=60
    )
    assert own.returncode == 0, own.stderr
    with table.open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["markers_count"], row["markers_total"]) == ("2", "4")  # p1 "five", p2 "scratch"
    missing = run_pacore("analyze", str(tmp_path / "nothing"), timeout=60)
    assert missing.returncode == 2 and "holds no benchmark results" in missing.stderr


# -- the blind counterfactual and a simulated AIME 2025 run ------------------------------------------


def test_blind_method_parses_and_runs_the_problem_alone() -> None:
    spec = MethodSpec.parse("pacore-blind:[16]")
    assert (spec.kind, spec.blind, spec.label, spec.trajectories) == (
        "pacore",
        True,
        "pacore-blind:medium",
        17,
    )
    assert MethodSpec.parse("PaCoRe-Blind:[8, 2]").label == "pacore-blind:[8,2]"
    assert not MethodSpec.parse("pacore-medium").blind
    assert blind_prompt("x", ["a", "b"]) == "x"

    async def run() -> tuple[str, list[dict[str, object]]]:
        backend = SimBackend(SimConfig(think_words=2))
        strategy = spec.strategy(backend, Problem(id="q", problem="What is 6*7?", answer="42"))
        result = await strategy.solve("What is 6*7?")
        return result.method, backend.engine.requests

    method, requests = anyio.run(run)
    assert method == "pacore-blind-medium"
    assert [r["messages"] for r in requests] == [[{"role": "user", "content": "What is 6*7?"}]] * 17


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimEngine, list[Problem]]:
    """PaCoRe, its blind counterfactual and sc@k on AIME 2025, pool protocol, on the simulated model."""
    try:
        _, problems, _ = load_problems("aime2025")
    except DatasetUnavailableError:
        pytest.skip("AIME 2025 data not found (set PACORE_DATA_DIR)")
    answers = {p.problem.strip(): p.answer for p in problems}
    engine = SimEngine(SimConfig(seed=11, answers=answers, think_words=8, accuracy=0.3, synth_recover=0.2))
    methods = ["pacore:[4]", "pacore-blind:[4]", "pacore:[16]", "pacore-blind:[16]", "sc@4", "sc@16"]
    settings = BenchSettings("aime2025", parse_methods(methods), samples=4, pool_size=16)
    out = tmp_path_factory.mktemp("sim") / "run"
    summary = anyio.run(run_bench, settings, problems, SimBackend(engine, max_concurrency=256), out)
    assert summary.complete and not summary.failed
    return out, engine, problems


def _expected(
    records: list[RunRecord], answers: dict[str, str], engine: SimEngine, blind: bool
) -> dict[str, tuple[float, float]]:
    """Expected counts (mean, variance) of the synthesis figures under the simulator's own rule.

    PaCoRe (`SimEngine._answer`): the right answer with probability ``synth_recover``, else a reference's answer
    picked with weight count ** ``synth_sharpness``. Blind: a first-round answer, right with probability
    ``accuracy``, else a distractor by ``distractor_weights``.
    """
    config = engine.config
    sums = {"correct": [0.0, 0.0], "shortcut": [0.0, 0.0], "emergent": [0.0, 0.0]}
    for record in records:
        (synthesis,) = syntheses_of(record)
        right = answers[record.problem_id]
        counts = Counter(a for a in synthesis.message_answers if a is not None)
        if blind:
            weights = config.distractor_weights
            wrong = engine.distractors(right)
            p = {a: (1 - config.accuracy) * w / sum(weights) for a, w in zip(wrong, weights, strict=True)}
            p[right] = config.accuracy
        else:
            total = sum(c**config.synth_sharpness for c in counts.values())
            p = {a: (1 - config.synth_recover) * c**config.synth_sharpness / total for a, c in counts.items()}
            p[right] = p.get(right, 0.0) + config.synth_recover
        top, _ = plurality(synthesis.message_answers, synthesis.message_correct)
        events = {
            "correct": p.get(right, 0.0),
            "shortcut": p.get(top, 0.0) if top is not None else 0.0,
            "emergent": p.get(right, 0.0) if not any(synthesis.message_correct) else 0.0,
        }
        for name, chance in events.items():
            sums[name][0] += chance
            sums[name][1] += chance * (1 - chance)
    return {name: (mean, var) for name, (mean, var) in sums.items()}


def test_sim_run_figures_follow_the_simulator(sim_run: tuple[Path, SimEngine, list[Problem]]) -> None:
    out, engine, problems = sim_run
    answers = {p.id: p.answer for p in problems}
    data = load_run(out)
    items = {i.method: i for i in analyze([out])}
    assert set(items) == {"pacore:low", "pacore-blind:low", "pacore:medium", "pacore-blind:medium"}
    for method, item in items.items():
        d = item.diagnostics
        assert d.syntheses == item.records == 120 and d.full_text == 120
        if item.blind:
            # Blind trajectories never see the references: no cross-checking words at all.
            assert d.markers == Rate(0, 120) and d.marker_mean.value == 0.0
        else:
            # Every simulated synthesis writes "Reference 1 says ...; cross-checking the N references."
            assert d.markers == Rate(120, 120) and d.marker_mean.value == 2.0
            # It answers with a reference's answer or, recovering, the right one: never novel and wrong.
            assert d.novel_wrong == Rate(0, 120)
        records = [r for r in data.records if r.method == method]
        expected = _expected(records, answers, engine, item.blind)
        observed = {
            "correct": sum(bool(r.correct) for r in records),
            "shortcut": d.shortcut.count,
            "emergent": d.emergent.count,
        }
        for name, (mean, variance) in expected.items():
            assert abs(observed[name] - mean) <= 3.5 * variance**0.5 + 1, (method, name, observed[name], mean)
    # PaCoRe follows its messages' plurality far more often than chance (the blind level).
    assert (
        items["pacore:low"].diagnostics.shortcut.count
        > 2 * items["pacore-blind:low"].diagnostics.shortcut.count
    )


def test_sim_blind_shares_the_drawn_first_round(sim_run: tuple[Path, SimEngine, list[Problem]]) -> None:
    out, engine, problems = sim_run
    records = {(r.method, r.problem_id, r.sample): r for r in load_run(out).records}
    for problem in problems:
        for sample in range(4):
            pacore, blind = (
                records["pacore:medium", problem.id, sample],
                records["pacore-blind:medium", problem.id, sample],
            )
            assert pacore.result.info["pool"]["drawn"] == blind.result.info["pool"]["drawn"]
            assert pacore.result.rounds[0].messages == blind.result.rounds[0].messages
            assert blind.result.method == "pacore-blind-medium"
    prompts = [r["messages"][-1]["content"] for r in engine.requests]
    synthesis = [
        p for p in prompts if p.startswith("You are given a problem and a list of reference responses.")
    ]
    # Pool (30 x 16), then per sample: PaCoRe's syntheses see references; blind's rounds see the problem.
    assert len(synthesis) == 2 * 30 * 4 and len(prompts) == 30 * 16 + 4 * 30 * 4
    families = {r.method: r.family for r in summarize([out])}
    assert families["pacore-blind:medium"] == "pacore-blind" and families["pacore:medium"] == "pacore"
    gaps = {g.pacore: g for g in blind_gaps([load_run(out)])}
    assert set(gaps) == {"pacore:low", "pacore:medium"}
    medium = gaps["pacore:medium"]
    assert medium.problems == 30 and medium.samples == (120, 120)
    assert medium.ci_low is not None and medium.ci_high is not None
    assert medium.ci_low <= medium.gap <= medium.ci_high
    assert medium.gap == pytest.approx(medium.pacore_accuracy - medium.blind_accuracy)


def test_cli_analyze_sim_run_with_plot(
    sim_run: tuple[Path, SimEngine, list[Problem]], tmp_path: Path
) -> None:
    out, _, _ = sim_run
    plot, md = tmp_path / "ttc.png", tmp_path / "d.md"
    done = run_pacore("analyze", str(out), "--plot", str(plot), "--md", str(md))
    assert done.returncode == 0, done.stderr
    assert "PaCoRe minus its blind counterfactual" in done.stdout
    assert "pacore:medium - pacore-blind:medium" in md.read_text()
    assert plot.read_bytes()[:4] == b"\x89PNG" and plot.stat().st_size > 20_000
    report = run_pacore("report", str(out))
    assert report.returncode == 0 and "PaCoRe minus its blind counterfactual" in report.stdout
