"""Schedules, the synthesis prompt, compactors and reference order: pure policies."""

from __future__ import annotations

import random

import jinja2
import pytest

import pacore_agent
from pacore_agent import Schedule, Trajectory, UsageError
from pacore_agent.compactors import (
    apply_compactor,
    boxed_only,
    chain,
    final_conclusion,
    full,
    last_boxed,
    last_tokens,
)
from pacore_agent.ordering import OFFICIAL_SEED, reference_order, round_rng
from pacore_agent.prompts import SYNTHESIS_TEMPLATE, build_prompt, normalize_problem, render_synthesis


def test_public_names_match_all() -> None:
    """Every name in __all__ resolves, and every public class or function of the package is in it."""
    for name in pacore_agent.__all__:
        assert getattr(pacore_agent, name) is not None
    lazy = pacore_agent._LAZY  # type: ignore[attr-defined]
    assert set(lazy) == set(pacore_agent.__all__)
    for name in ("Coordinator", "OpenAIBackend", "SolveResult"):
        assert name in pacore_agent.__all__
    with pytest.raises(AttributeError):
        pacore_agent.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize(
    ("value", "widths", "rounds"),
    [
        ("low", (4,), (4, 1)),
        ("medium", (16,), (16, 1)),
        ("high", (32, 4), (32, 4, 1)),
        ("HIGH", (32, 4), (32, 4, 1)),
        ([32, 4], (32, 4), (32, 4, 1)),
        ("32,4", (32, 4), (32, 4, 1)),
        ("[8, 2]", (8, 2), (8, 2, 1)),
        ([1, 1, 1], (1, 1, 1), (1, 1, 1, 1)),
    ],
)
def test_schedule_parsing(value: object, widths: tuple[int, ...], rounds: tuple[int, ...]) -> None:
    schedule = Schedule.parse(value)  # type: ignore[arg-type]
    assert schedule.widths == widths
    assert schedule.rounds == rounds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "empty"),
        ("", "empty"),
        ([0], "positive"),
        ([4, -1], "positive"),
        ([2.5], "positive"),
        ("extreme", "unknown schedule"),
        (4, "list of widths"),
        ([1024], "safety cap"),
    ],
)
def test_schedule_errors(value: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Schedule.parse(value)  # type: ignore[arg-type]


def test_schedule_cap_is_configurable() -> None:
    assert Schedule.parse([1024], max_width=1024).widths == (1024,)


def test_packaged_template_is_the_trained_one(shared_dir) -> None:  # type: ignore[no-untyped-def]
    assert (shared_dir / "docs" / "synthesis_template.txt").read_text(encoding="utf-8") == SYNTHESIS_TEMPLATE


def test_rendering_is_jinja2_default_rendering(shared_dir) -> None:  # type: ignore[no-untyped-def]
    refs = ["The answer is $\\boxed{3}$.", "  {{ not a tag }} \n", "Ref with trailing newline\n"]
    expected = jinja2.Template((shared_dir / "docs" / "synthesis_template.txt").read_text()).render(
        original_prompt="Find x.", ref_responses=refs
    )
    assert render_synthesis("Find x.", refs) == expected
    assert not expected.endswith("\n")  # Jinja2's default drops the template's trailing newline
    assert "Reference 3:\nRef with trailing newline\n" in expected


def test_bypass_when_no_references() -> None:
    messages = normalize_problem("What is 1+1?")
    assert build_prompt(messages, []) is messages


def test_only_last_user_message_is_replaced() -> None:
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Second"}, {"type": "text", "text": "question"}],
        },
    ]
    prompt = build_prompt(history, ["m1", "m2"])
    assert prompt[:3] == history[:3]
    assert prompt[3]["content"] == render_synthesis("Second\nquestion", ["m1", "m2"])
    assert history[3]["content"][0]["text"] == "Second"  # the caller's conversation is untouched


def test_custom_templates() -> None:
    messages = normalize_problem("P")
    assert (
        build_prompt(messages, ["a"], "{{ original_prompt }}|{{ ref_responses|join(',') }}")[0]["content"]
        == "P|a"
    )
    assert build_prompt(messages, ["a", "b"], lambda p, refs: f"{p}:{len(refs)}")[0]["content"] == "P:2"


@pytest.mark.parametrize(
    "problem",
    [
        "",
        "   ",
        [],
        [{"role": "system", "content": "x"}],
        [{"content": "no role"}],
        [{"role": "user", "content": ""}],
    ],
)
def test_bad_problems(problem: object) -> None:
    with pytest.raises(UsageError):
        normalize_problem(problem)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "conclusion"),
    [
        ("<think>a</think>\n\nThe answer is 4.", "\n\nThe answer is 4."),
        ("<think>a</think>x</think>  tail ", "  tail "),
        ("no think tags at all", "no think tags at all"),
        ("<think>unfinished thought", "<think>unfinished thought"),
        ("<think>a</think>", ""),
    ],
)
def test_final_conclusion(text: str, conclusion: str) -> None:
    assert final_conclusion(text) == conclusion


def test_split_reasoning_conclusion_is_the_content() -> None:
    trajectory = Trajectory(round=0, index=0, content="\nSo \\boxed{5}.", reasoning="long </think> thought")
    assert final_conclusion(trajectory.text) == trajectory.content


def test_boxed_only_and_full() -> None:
    text = "<think>\\boxed{1}</think>We get \\boxed{\\frac{1}{2}} and finally \\boxed{\\sqrt{\\{3\\}}}!"
    assert last_boxed("x \\fbox{7} y") == "\\fbox{7}"
    assert boxed_only(text) == "\\boxed{\\sqrt{\\{3\\}}}"
    assert boxed_only("<think>x</think>no box here") == "no box here"
    assert full(text) == text


def test_last_tokens_with_tiktoken_offline() -> None:
    compact = last_tokens(3)
    assert compact("one two three four five six") == " four five six"
    assert compact("short") == "short"
    with pytest.raises(UsageError):
        last_tokens(0)


def test_last_tokens_with_a_custom_tokenizer() -> None:
    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(map(chr, ids))

    assert last_tokens(4, Chars())("abcdefgh") == "efgh"


@pytest.mark.anyio
async def test_chain_composes_sync_and_async() -> None:
    async def shout(text: str) -> str:
        return text.upper()

    from pacore_agent.tokenizers import tiktoken_encoding

    encoding = tiktoken_encoding("cl100k_base")
    compact = chain(final_conclusion, shout, last_tokens(2, "cl100k_base"))
    expected = encoding.decode(encoding.encode("THE ANSWER IS FIVE")[-2:])
    assert await apply_compactor(compact, "<think>x</think>the answer is five") == expected
    assert "THE" not in expected


def _trajectories(contents: list[str | None], failed: set[int] = frozenset()) -> list[Trajectory]:  # type: ignore[assignment]
    return [
        Trajectory(round=0, index=i, content=c, status="failed" if i in failed else "ok")
        for i, c in enumerate(contents)
    ]


def test_seeded_order_is_reproducible_and_skips_failures() -> None:
    trajectories = _trajectories(["a", "bb", "", "dddd", "e"], failed={4})
    first = reference_order("seeded", trajectories, round_rng(7, "key", 1))
    again = reference_order("seeded", trajectories, round_rng(7, "key", 1))
    assert first == again
    assert sorted(first) == [0, 1, 3]
    orders = {tuple(reference_order("seeded", trajectories, round_rng(s, "key", 1))) for s in range(20)}
    assert len(orders) > 1  # seeded, not fixed


def test_official_order_matches_the_pipeline() -> None:
    contents = ["ccc", "a", None, "bbbbb", "dd"]
    trajectories = _trajectories(contents, failed={2})
    # The official pipeline: failed calls become empty responses, all are sorted by length,
    # shuffled with Random(42), and empty ones are dropped when building the next prompt.
    responses = [{"content": c or "", "i": i} for i, c in enumerate(contents)]
    responses.sort(key=lambda r: len(r["content"]))
    random.Random(OFFICIAL_SEED).shuffle(responses)
    expected = [r["i"] for r in responses if r["content"]]
    assert reference_order("official", trajectories, random.Random(0)) == expected


def test_tune_gc_raises_thresholds_and_returns_the_previous() -> None:
    import gc

    from pacore_agent.runtime import HIGH_CONCURRENCY_GC, tune_gc

    before = gc.get_threshold()
    try:
        assert tune_gc() == before
        assert gc.get_threshold() == HIGH_CONCURRENCY_GC
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
