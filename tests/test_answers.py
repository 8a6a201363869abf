"""Answer extraction, math equivalence (math-verify in a worker process), grading, voting, emergence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import anyio
import pytest

from pacore_agent.evaluation import answers
from pacore_agent.evaluation.answers import (
    AnswerClass,
    SynthesisOutcome,
    agrade,
    amath_equal,
    avote,
    emergent_correctness,
    extract_answer,
    grade,
    group_answers,
    math_equal,
    normalize_answer,
    vote,
)
from tests._data import answers_by_id

# ---------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------

# Real answers from the `answer` fields of shared/data: integers, fractions, radicals, a product with a
# factorial, answer lists, tuples, intervals, unions, equations, decimals and free text.
REAL_ANSWER_IDS = [
    "aime2025_I_1",  # 70
    "aime2025_II_12",  # 19
    "hmmt2025feb_3",  # \frac{1}{576}
    "hmmt2025feb_4",  # -984
    "hmmt2025feb_6",  # \frac{1311}{2017}
    "hmmt2025feb_7",  # \frac{9 \sqrt{23}}{23}
    "hmmt2025feb_8",  # 1-\frac{2}{\pi}
    "hmmt2025feb_10",  # \frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}
    "hmmt2025feb_17",  # 2^{25} \cdot 26!
    "hmmt2025feb_23",  # 8\sqrt{10}
    "hmmt2025feb_25",  # \sqrt{23}-2 \sqrt{3}
    "hmmt2025feb_29",  # 14+4\sqrt{37}
    "hmmt2025feb_30",  # \sqrt{\frac{95}{24}}
    "imo-bench-algebra-010",  # $-\frac{2}{3},0,\frac{2}{3}$
    "imo-bench-algebra-017",  # $(-\infty,0)\cup\{\frac{1}{2}\}$
    "imo-bench-algebra-018",  # 2026, 2030
    "imo-bench-algebra-019",  # 4151879777
    "imo-bench-algebra-028",  # $(-\infty , 0]$
    "imo-bench-algebra-040",  # f(x)=x+1
    "imo-bench-algebra-048",  # $[-6,5]$
    "imo-bench-algebra-057",  # 1/2,1,2
    "imo-bench-algebra-072",  # $x\geq-\frac{6}{5}$
    "imo-bench-combinatorics-011",  # 0.5
    "imo-bench-combinatorics-012",  # $\binom{2k}{k}^2$
    "imo-bench-combinatorics-040",  # 1307674368000
    "imo-bench-combinatorics-052",  # $(2k-1)!!$
    "imo-bench-combinatorics-059",  # taking the empty card
    "imo-bench-combinatorics-064",  # No positive integers
    "imo-bench-geometry-004",  # 4, 5
    "imo-bench-geometry-032",  # 1.75
    "imo-bench-geometry-078",  # 1 if triangle is isoceles, otherwise 2
    "imo-bench-number_theory-005",  # $\mathbb{Z}$
    "imo-bench-number_theory-007",  # n is prime
    "imo-bench-number_theory-019",  # (2,251,252)
    "imo-bench-number_theory-048",  # $\left\{ (a,b):ab\leq e^{3}\right\}$
    "imo-bench-number_theory-054",  # All prime numbers, 1, 4, and 6.
    "imo-bench-number_theory-069",  # 60, 100, 8p (for all odd primes p)
    "imo-bench-number_theory-084",  # 5,-3
]


def _conclusion(answer: str) -> str:
    return (
        "We have checked every case, and the construction above is optimal. "
        f"Therefore, the answer is $\\boxed{{{answer}}}$."
    )


@pytest.mark.parametrize("problem_id", REAL_ANSWER_IDS)
def test_real_answers_round_trip_through_a_boxed_conclusion(problem_id: str) -> None:
    answer = answers_by_id()[problem_id]
    expected = answer.strip()
    if expected.startswith("$") and expected.endswith("$"):  # extraction strips surrounding $
        expected = expected[1:-1].strip()
    assert extract_answer(_conclusion(answer)) == expected


def test_every_data_answer_round_trips_and_grades_against_itself() -> None:
    rows = answers_by_id()
    assert len(rows) == 460
    for problem_id, answer in rows.items():
        extracted = extract_answer(_conclusion(answer))
        assert extracted, problem_id
        assert grade(_conclusion(answer), answer), problem_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is $\\boxed{1,234}$.", "1,234"),
        ("First \\boxed{3}, but after fixing the sign: \\boxed{-3}.", "-3"),
        ("nested: \\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("escaped braces: \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("no braces: $\\boxed 5$.", "5"),
        ("framed: \\fbox{12}", "12"),
        ("inner dollars: \\boxed{$x+1$}", "x+1"),
        ("a truncated last box is skipped: \\boxed{7} and then \\boxed{8", "7"),
        ("The final answer is $42$. I hope it is correct.", "42"),
        ("Final answer: 3,456.", "3,456"),
        ("**Final Answer:** \\frac{1}{2}", "\\frac{1}{2}"),
        ("**Answer:** $(1, 2)$", "(1, 2)"),
        ("Answer: odd $n$", "odd $n$"),
        ("## Final Answer\n\n$x = 5$\n", "x = 5"),
        ("Thus the answer is 12.", "12"),
        ("The boxed form wins: \\boxed{9}. Final answer: 10", "9"),
    ],
)
def test_extraction_forms(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [None, "", "   \n", 42, ["\\boxed{1}"], b"\\boxed{1}", "\\boxed{}", "I could not finish: 1,234 and 5."],
)
def test_extraction_without_an_answer_is_none(text: object) -> None:
    assert extract_answer(text) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The total is 1,234 apples.", "1234"),
        ("it drops to -3.5 degrees", "-3.5"),
        ("between 10 and 20, so 15", "15"),
        ("no digits at all", None),
    ],
)
def test_last_number_fallback_only_when_asked(text: str, expected: str | None) -> None:
    assert extract_answer(text) is None
    assert extract_answer(text, fallback_last_number=True) == expected


def test_normalize_answer() -> None:
    assert normalize_answer("$1,234$") == "1234"
    assert normalize_answer("1{,}234") == "1234"
    assert normalize_answer("1, 234") == "1,234"  # two numbers, not a thousands separator
    assert normalize_answer("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize_answer("45^\\circ") == "45"
    assert normalize_answer("\\text{odd } n.") == "oddn"
    assert normalize_answer(None) == ""  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Equivalence and grading
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "reference"),
    [
        ("1,234", "1234"),
        ("070", "70"),
        ("-984.0", "-984"),
        ("0.5", "\\frac12"),
        ("1311/2017", "\\frac{1311}{2017}"),
        ("9\\sqrt{23}/23", "\\frac{9 \\sqrt{23}}{23}"),
        ("\\frac{9}{\\sqrt{23}}", "\\frac{9 \\sqrt{23}}{23}"),
        ("\\frac{\\pi-2}{\\pi}", "1-\\frac{2}{\\pi}"),
        ("2^{25}\\times 26!", "2^{25} \\cdot 26!"),
        (
            "\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}",
            "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}",
        ),
        ("2030, 2026", "2026, 2030"),
        ("[-6, 5]", "$[-6,5]$"),
        ("(-\\infty, 0) \\cup \\{0.5\\}", "$(-\\infty,0)\\cup\\{\\frac{1}{2}\\}$"),
        ("(2, 0.5, 2.25)", "$(2, \\frac{1}{2}, \\frac{9}{4})$"),
        ("x \\ge -6/5", "$x\\geq-\\frac{6}{5}$"),
        ("\\frac{\\sqrt{570}}{12}", "\\sqrt{\\frac{95}{24}}"),
        ("61917364224", "12^{10}"),
        ("45^\\circ", "45"),
        ("Odd n", "odd $n$"),
        ("no positive integers", "No positive integers"),
        ("\\text{Taking the empty card}", "taking the empty card"),
    ],
)
def test_equivalent_forms_are_equal(candidate: str, reference: str) -> None:
    assert math_equal(candidate, reference)
    assert grade(_conclusion(candidate), reference)


@pytest.mark.parametrize(
    ("candidate", "reference"),
    [
        ("71", "70"),
        ("1, 234", "1234"),  # a list of two numbers
        ("\\frac{1}{3}", "\\frac{1}{576}"),
        ("\\frac{-1-\\sqrt{17}}{2}", "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}"),  # half the set
        ("2^{26} \\cdot 26!", "2^{25} \\cdot 26!"),
        ("(-6, 5)", "[-6,5]"),  # open vs closed interval
        ("(2, 2.25, 0.5)", "(2, \\frac{1}{2}, \\frac{9}{4})"),  # tuples are ordered
        ("9\\sqrt{23}", "\\frac{9 \\sqrt{23}}{23}"),
        ("even $n$", "odd $n$"),
        ("n is composite", "n is prime"),
        ("", "1"),
    ],
)
def test_different_answers_are_not_equal(candidate: str, reference: str) -> None:
    assert not math_equal(candidate, reference)
    assert not grade(_conclusion(candidate), reference)


@pytest.mark.parametrize(
    "response", [None, "", "   ", 17, "I am not sure how to proceed with this problem.\nSorry."]
)
def test_grade_is_false_without_an_answer(response: object) -> None:
    assert grade(response, "17") is False  # type: ignore[arg-type]


def test_grade_takes_a_bare_answer_and_rejects_bad_references() -> None:
    assert grade("1,234", "1234")
    assert grade("$\\frac{1}{2}$", "0.5")
    assert not grade("\\boxed{1}", "")
    assert not grade("\\boxed{1}", None)  # type: ignore[arg-type]
    assert not math_equal(1, "1")  # type: ignore[arg-type]
    assert grade("The sum is 12 in total", "12", fallback_last_number=True)


def test_math_equal_from_threads_and_async_code() -> None:
    """math-verify's signal-based timeouts fail off the main thread; the worker process makes it work."""
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(math_equal("\\sqrt{8}", "2\\sqrt{2}")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 4

    async def main() -> tuple[bool, bool, bool]:
        return (
            await amath_equal("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
            await agrade("so \\boxed{\\frac{9\\sqrt{23}}{23}}", "9\\sqrt{23}/23"),
            await agrade(None, "1"),
        )

    assert anyio.run(main) == (True, True, False)


HANGING = "9^{9^{9^{9}}}"

_RAW_MATH_VERIFY = textwrap.dedent(
    """
    import logging, sys
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify
    print("imported", flush=True)
    gold = parse(sys.argv[1], parsing_timeout=None)
    print(verify(gold, parse(sys.argv[2], parsing_timeout=None), timeout_seconds=None), flush=True)
    """
)


def test_the_hanging_expression_really_hangs_without_a_timeout() -> None:
    """Control for the next test: math-verify with its timeouts off does not finish on HANGING."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _RAW_MATH_VERIFY, f"\\boxed{{{HANGING}}}", "\\boxed{1}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"imported\n"
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)  # three times the timeout used below; it would go on for ever
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_hanging_expression_is_cut_by_the_timeout() -> None:
    # Start the worker first: its start-up (imports) is not charged to any call's timeout.
    assert math_equal("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")
    start = time.monotonic()
    assert math_equal(HANGING, "1", timeout=1.0) is False
    assert math_equal("1", HANGING, timeout=1.0) is False
    assert time.monotonic() - start < 4.0
    assert math_equal("\\frac{1}{\\sqrt{3}}", "\\frac{\\sqrt{3}}{3}", timeout=1.0)  # still serving


def test_an_unresponsive_worker_is_killed_and_replaced() -> None:
    """The parent's deadline, not the worker's own alarm: a stopped worker is killed after the timeout."""
    assert math_equal("\\frac{2}{\\sqrt{2}}", "\\sqrt{2}")  # at least one worker is up and idle
    worker = answers._POOL._idle[-1]
    pid = worker._proc.pid
    os.kill(pid, signal.SIGSTOP)  # it can no longer answer, not even to its own SIGALRM
    start = time.monotonic()
    assert math_equal("\\frac{3}{\\sqrt{3}}", "\\sqrt{3}", timeout=0.5) is False
    assert time.monotonic() - start < 2.5
    assert not worker.alive
    assert worker not in answers._POOL._idle
    assert math_equal("\\frac{5}{\\sqrt{5}}", "\\sqrt{5}")  # another (or a fresh) worker answers


# ---------------------------------------------------------------------------------------------------------
# Voting
# ---------------------------------------------------------------------------------------------------------


def test_vote_counts_equivalent_forms_together() -> None:
    ballots = ["\\frac{1}{2}", "7", "0.5", None, "1/2", "7", "\\dfrac12", "8"]
    result = vote(ballots)
    assert result.answer == "\\frac{1}{2}"
    assert result.winner == AnswerClass("\\frac{1}{2}", (0, 2, 4, 6))
    assert result.counts == {"\\frac{1}{2}": 4, "7": 2, None: 1, "8": 1}
    assert result.total == len(ballots)


def test_vote_groups_sets_in_any_order() -> None:
    roots = "\\frac{-1+\\sqrt{17}}{2}, \\frac{-1-\\sqrt{17}}{2}"
    swapped = "\\frac{-1-\\sqrt{17}}{2}, \\frac{-1+\\sqrt{17}}{2}"
    result = vote(["3", swapped, roots, "3", roots])
    assert result.answer == swapped
    assert result.counts == {"3": 2, swapped: 3}


def test_vote_tie_goes_to_the_class_seen_first() -> None:
    result = vote(["5", "6", "6.0", "5.0"])
    assert result.counts == {"5": 2, "6": 2}
    assert result.answer == "5"
    assert vote(["6", "5", "5", "6"]).answer == "6"


def test_missing_answers_win_only_when_nothing_else_exists() -> None:
    assert vote([None, None, None, "4"]).answer == "4"
    everything_missing = vote([None, "", None])
    assert everything_missing.answer is None
    assert everything_missing.winner == AnswerClass(None, (0, 1, 2))
    assert vote([]).winner is None
    assert vote([]).counts == {}


def test_group_answers_keeps_first_appearance_order() -> None:
    classes = group_answers(["b", "1,000", "1000", None, "b"])
    assert [(c.representative, c.members, c.count) for c in classes] == [
        ("b", (0, 4), 2),
        ("1,000", (1, 2), 2),
        (None, (3,), 1),
    ]


def test_avote_runs_off_the_event_loop() -> None:
    async def main() -> str | None:
        return (await avote(["2", "\\sqrt{4}", "3"])).answer

    assert anyio.run(main) == "2"


# ---------------------------------------------------------------------------------------------------------
# Emergent correctness
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "synthesis", "expected"),
    [
        ([False, False, False], True, True),
        ([False, True, False], True, False),  # a correct input could have been copied
        ([False, False], False, False),
        ([], True, False),  # no messages: nothing to emerge from
        ([True], True, False),
    ],
)
def test_emergent_correctness(messages: list[bool], synthesis: bool, expected: bool) -> None:
    assert emergent_correctness(messages, synthesis) is expected
    outcome = SynthesisOutcome.from_flags(messages, synthesis)
    assert outcome.emergent is expected
    assert outcome.as_dict()["emergent"] is expected


def test_synthesis_outcome_report() -> None:
    outcome = SynthesisOutcome.from_flags([False, True, False, False], False)
    assert outcome == SynthesisOutcome(messages=4, messages_correct=1, synthesis_correct=False)
    assert outcome.message_accuracy == 0.25
    assert SynthesisOutcome.from_flags([], True).message_accuracy == 0.0


def test_all_names_are_exported() -> None:
    for name in answers.__all__:
        assert hasattr(answers, name), name
