"""Training problems: our JSONL, the PaCoRe-Train-8k layout and the synthetic arithmetic generator."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pacore_agent.evaluation.answers import grade
from pacore_agent.evaluation.datasets import DatasetFormatError, write_jsonl
from pacore_agent.exceptions import UsageError
from training.data import (
    ARITHMETIC_MAX,
    ARITHMETIC_MIN,
    ARITHMETIC_MODULUS,
    TrainProblem,
    arithmetic_problems,
    load_pacore_train,
    load_problems,
    load_training_problems,
    parse_tests,
)

TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10\n"}]


def _write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- our JSONL -------------------------------------------------------------------------------------


def test_our_jsonl_loads_math_and_code(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "train.jsonl",
        [
            {"id": "m1", "problem": "What is 2+2?", "answer": "4"},
            {"id": 7, "problem": "Sum two numbers.", "domain": "code", "tests": TESTS},
            {
                "id": "m2",
                "problem": "Find x.",
                "answer": 3,
                "conversation": [
                    {"role": "system", "content": "Be careful."},
                    {"role": "user", "content": "Find x."},
                ],
                "responses": ["<think>hm</think>The answer is \\boxed{3}."],
            },
        ],
    )
    math, code, chat = load_problems(path)
    assert isinstance(math, TrainProblem) and math.answer == "4" and math.domain == "math"
    assert math.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert code.id == "7" and code.domain == "code" and [t.input for t in code.tests] == ["1 2\n", "5 5\n"]
    assert chat.answer == "3" and chat.messages[0]["role"] == "system" and len(chat.responses) == 1
    assert "conversation" not in chat.metadata and "responses" not in chat.metadata
    # write_jsonl round-trips a TrainProblem through our own loader.
    again = load_problems(write_jsonl(tmp_path / "again.jsonl", [math, code, chat]))
    assert again == [math, code, chat]


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({"id": "a", "problem": "x"}, "missing field 'answer'"),
        ({"id": "a", "problem": "", "answer": "1"}, "field 'problem'"),
        ({"id": "a", "problem": "p", "domain": "code", "tests": []}, "field 'tests'"),
        ({"id": "a", "problem": "p", "answer": "1", "domain": "bio"}, "field 'domain'"),
    ],
)
def test_our_jsonl_bad_lines_name_file_line_and_field(
    tmp_path: Path, row: dict[str, Any], fragment: str
) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [{"id": "ok", "problem": "p", "answer": "1"}, row])
    with pytest.raises(DatasetFormatError, match=re.escape(fragment)) as info:
        load_problems(path)
    assert str(info.value).startswith(f"{path}:2: ") and info.value.line == 2


def test_our_jsonl_bad_conversation_is_a_format_error(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "conv.jsonl",
        [
            {
                "id": "a",
                "problem": "p",
                "answer": "1",
                "conversation": [{"role": "assistant", "content": "hi"}],
            }
        ],
    )
    with pytest.raises(DatasetFormatError, match=r"conv\.jsonl.*'a'.*conversation"):
        load_problems(path)


# -- PaCoRe-Train-8k -------------------------------------------------------------------------------


def _pacore_records() -> list[dict[str, Any]]:
    return [
        {
            "conversation": [{"role": "user", "content": "Compute 6*7."}],
            "responses": [
                "<think>6*7</think>\n\nSo \\boxed{42}.",
                {"role": "assistant", "content": "\\boxed{41}"},
            ],
            "ground_truth": "42",
            "data_source": "synthetic_math",
        },
        {
            "id": "code-1",
            "conversation": [
                {"role": "system", "content": "You write Python."},
                {"role": "user", "content": "Read a and b, print a+b."},
            ],
            "responses": [
                {
                    "role": "assistant",
                    "content": "```python\nprint(sum(map(int, input().split())))\n```",
                    "reasoning_content": "easy",
                }
            ],
            "ground_truth": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]}),
        },
    ]


@pytest.mark.parametrize("layout", ["json", "jsonl"])
def test_pacore_train_layout_loads(tmp_path: Path, layout: str) -> None:
    records = _pacore_records()
    path = tmp_path / f"stage1.{layout}"
    if layout == "json":
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    else:
        _write_lines(path, records)
    math, code = load_training_problems(path)
    assert math.id == "stage1-0" if layout == "json" else math.id == "stage1-1"
    assert math.problem == "Compute 6*7." and math.answer == "42" and math.domain == "math"
    assert math.conversation == []  # a lone user message is just the problem
    assert math.responses == ["<think>6*7</think>\n\nSo \\boxed{42}.", "\\boxed{41}"]
    assert math.metadata["data_source"] == "synthetic_math"
    assert code.id == "code-1" and code.domain == "code" and code.answer == ""
    assert [(t.input, t.output) for t in code.tests] == [("1 2\n", "3\n")]
    assert code.messages[0] == {"role": "system", "content": "You write Python."}
    assert code.problem == "Read a and b, print a+b."
    assert code.responses[0].startswith("<think>easy</think>```python")


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"ground_truth": "1"}, "missing field 'conversation'"),
        ({"conversation": [{"role": "user", "content": "q"}]}, "missing field 'ground_truth'"),
        ({"conversation": [], "ground_truth": "1"}, "field 'conversation' must be a non-empty list"),
        ({"conversation": [{"role": "assistant", "content": "q"}], "ground_truth": "1"}, "no user message"),
        ({"conversation": [{"role": "user", "content": "q"}], "ground_truth": ""}, "'ground_truth' is empty"),
        ({"conversation": [{"role": "user", "content": "q"}], "ground_truth": ["x"]}, "string or a number"),
        (
            {"conversation": [{"role": "user", "content": "q"}], "ground_truth": "3", "domain": "code"},
            "must hold tests",
        ),
        (
            {"conversation": [{"role": "user", "content": "q"}], "ground_truth": "3", "responses": [7]},
            "field 'responses': a cached response must be a string or a chat message",
        ),
        (
            {
                "conversation": [{"role": "user", "content": "q"}],
                "ground_truth": "3",
                "responses": [{"content": 5}],
            },
            "field 'responses': message content must be a string",
        ),
    ],
)
def test_pacore_train_bad_records(tmp_path: Path, record: dict[str, Any], fragment: str) -> None:
    good = _pacore_records()[0]
    lines = _write_lines(tmp_path / "train.jsonl", [good, record])
    with pytest.raises(DatasetFormatError, match=re.escape(fragment)) as info:
        load_pacore_train(lines)
    assert str(info.value).startswith(f"{lines}:2: ")
    array = tmp_path / "train.json"
    array.write_text(json.dumps([good, record]), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=re.escape(fragment)) as info:
        load_pacore_train(array)
    assert str(info.value).startswith(f"{array}: record 1: ")


def test_pacore_train_duplicate_ids_and_non_objects(tmp_path: Path) -> None:
    record = {"id": "x", "conversation": [{"role": "user", "content": "q"}], "ground_truth": "1"}
    with pytest.raises(DatasetFormatError, match="duplicate id 'x'"):
        load_pacore_train(_write_lines(tmp_path / "dup.jsonl", [record, record]))
    with pytest.raises(DatasetFormatError, match="expected a JSON object"):
        load_pacore_train(_write_lines(tmp_path / "list.jsonl", [[1, 2]]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"conversation": \n', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"broken\.jsonl:1: not valid JSON"):
        load_pacore_train(broken)


def test_parse_tests_shapes() -> None:
    assert parse_tests("42") is None and parse_tests(42) is None and parse_tests("[1, 2]") is None
    assert parse_tests("[]") is None and parse_tests({"inputs": ["1"], "outputs": []}) is None
    listed = parse_tests(json.dumps(TESTS))
    assert listed is not None and [t.output for t in listed] == ["3\n", "10\n"]
    functional = parse_tests([{"input": [1, 2], "output": 3, "testtype": "functional"}])
    assert (
        functional is not None and functional[0].input == "[1, 2]" and functional[0].testtype == "functional"
    )


# -- synthetic arithmetic --------------------------------------------------------------------------


def test_arithmetic_is_seeded_exact_and_in_range() -> None:
    problems = arithmetic_problems(200, seed=5)
    assert problems == arithmetic_problems(200, seed=5)
    assert problems != arithmetic_problems(200, seed=6)
    assert len({p.id for p in problems}) == 200 and problems[0].id == "arith-5-00000"
    assert {p.metadata["op"] for p in problems} == {"add", "sub", "mul", "powmod"}
    for problem in problems:
        a, b, op = problem.metadata["a"], problem.metadata["b"], problem.metadata["op"]
        assert ARITHMETIC_MIN <= a <= ARITHMETIC_MAX and ARITHMETIC_MIN <= b <= ARITHMETIC_MAX
        expected = {"add": a + b, "sub": a - b, "mul": a * b, "powmod": pow(a, b, ARITHMETIC_MODULUS)}[op]
        assert problem.answer == str(expected)
        assert str(a) in problem.problem and str(b) in problem.problem
        assert problem.problem.endswith("put your final answer in \\boxed{}.")
        if op == "powmod":
            assert str(ARITHMETIC_MODULUS) in problem.problem
    assert any(p.answer.startswith("-") for p in problems)  # B > A happens
    # The answers grade as exact integers: right when equal, wrong when off by one.
    sample = problems[0]
    assert grade(f"The answer is \\boxed{{{sample.answer}}}.", sample.answer)
    assert not grade(f"\\boxed{{{int(sample.answer) + 1}}}", sample.answer)


def test_arithmetic_modulus_is_the_mersenne_prime() -> None:
    assert ARITHMETIC_MODULUS == 2305843009213693951
    # Miller-Rabin with these bases is deterministic below 3.3e24.
    n, d, r = ARITHMETIC_MODULUS, ARITHMETIC_MODULUS - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for base in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41):
        x = pow(base, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            pytest.fail(f"{n} is composite (witness {base})")


def test_arithmetic_ops_and_bad_arguments() -> None:
    assert {p.metadata["op"] for p in arithmetic_problems(20, ops=["mul"])} == {"mul"}
    with pytest.raises(UsageError, match="ops must be"):
        arithmetic_problems(3, ops=["div"])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="count"):
        arithmetic_problems(-1)
    with pytest.raises(UsageError, match="low <= high"):
        arithmetic_problems(1, low=10, high=5)
