"""The synthesis environment: the |M| draw, P(x, M) byte-identical to the Coordinator's, rewards, flags."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import jinja2
import pytest

from pacore_agent import Coordinator, OpenAIBackend, SimConfig, SimServer
from pacore_agent.evaluation.store import PoolEntry, PoolMessage
from pacore_agent.exceptions import PacoreRuntimeError, UsageError
from training.data import TrainProblem
from training.env import (
    EnvConfig,
    EnvDataError,
    RewardError,
    SynthesisEnv,
    apply_chat_template,
    cross_check_mentions,
    draw_messages,
    episode_rng,
)

CHI2_CRITICAL_8_DOF = 26.12  # p = 0.001
CHI2_CRITICAL_23_DOF = 49.73  # p = 0.001

TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "4\n"}]


def _entry(
    problem_id: str = "p",
    *,
    correct: Sequence[bool] = (True,) * 8 + (False,) * 16,
    answer: str = "7",
    domain: str = "math",
    metadata: dict[str, object] | None = None,
) -> PoolEntry:
    messages = [
        PoolMessage(
            message=f"Message {i}: so \\boxed{{{answer if ok else 100 + i}}}.", correct=ok, score=float(ok)
        )
        for i, ok in enumerate(correct)
    ]
    return PoolEntry(
        problem_id=problem_id,
        problem=f"Problem {problem_id}: find the number.",
        answer=answer if domain == "math" else "",
        domain=domain,  # type: ignore[arg-type]
        messages=messages,
        metadata=metadata or {},
    )


def _chi_square(counts: Counter[int], categories: Sequence[int]) -> float:
    total = sum(counts.values())
    expected = total / len(categories)
    return sum((counts.get(c, 0) - expected) ** 2 / expected for c in categories)


# -- the draw --------------------------------------------------------------------------------------


def test_message_count_is_uniform_over_lo_hi() -> None:
    env = SynthesisEnv([_entry()])
    sizes: Counter[int] = Counter()
    first: Counter[int] = Counter()
    for step in range(200):
        for index in range(30):
            episode = env.episode(0, step=step, index=index)
            sizes[len(episode.references)] += 1
            first[episode.message_indices[0]] += 1
            assert len(set(episode.message_indices)) == len(episode.message_indices)
    assert set(sizes) == set(range(16, 25))
    assert _chi_square(sizes, range(16, 25)) < CHI2_CRITICAL_8_DOF
    # Which message leads is uniform too: the reference order is a fresh shuffle.
    assert _chi_square(first, range(24)) < CHI2_CRITICAL_23_DOF


def test_draws_are_deterministic_in_seed_step_index() -> None:
    env = SynthesisEnv([_entry("a"), _entry("b")], EnvConfig(seed=3))
    twin = SynthesisEnv([_entry("a"), _entry("b")], EnvConfig(seed=3))
    episode = env.episode("a", step=5, index=2)
    assert twin.episode(0, step=5, index=2) == episode
    assert env.episode("a", step=6, index=2).message_indices != episode.message_indices
    assert env.episode("a", step=5, index=3).message_indices != episode.message_indices
    other_seed = SynthesisEnv([_entry("a")], EnvConfig(seed=4)).episode(0, step=5, index=2)
    assert other_seed.message_indices != episode.message_indices
    assert episode.references == tuple(env.entry("a").messages[i].message for i in episode.message_indices)
    assert episode.message_correct == tuple(i < 8 for i in episode.message_indices)
    assert episode_rng(1, 2, 3).random() == episode_rng(1, 2, 3).random()


def test_draw_messages_caps_hi_at_the_pool_size() -> None:
    rng = episode_rng(0, 0, 0)
    assert all(16 <= len(draw_messages(18, 16, 24, rng)) <= 18 for _ in range(200))
    with pytest.raises(UsageError, match="cannot give at least 16"):
        draw_messages(15, 16, 24, rng)
    with pytest.raises(UsageError, match="lo <= hi"):
        EnvConfig(lo=5, hi=4)
    with pytest.raises(UsageError, match="lo <= hi"):
        EnvConfig(lo=0, hi=4)


# -- P(x, M) is what the Coordinator sends ---------------------------------------------------------


@pytest.mark.anyio
async def test_prompt_is_byte_identical_to_what_the_coordinator_sends(shared_dir: Path) -> None:
    template = jinja2.Template((shared_dir / "docs" / "synthesis_template.txt").read_text(encoding="utf-8"))
    chat = [
        {"role": "system", "content": "You are a careful mathematician."},
        {"role": "user", "content": "Warm-up: 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Problem chat: find the number."},
    ]
    plain = _entry("plain")
    multi = _entry("multi", metadata={"conversation": chat})
    env = SynthesisEnv([plain, multi])
    async with SimServer(SimConfig(seed=1)) as server:
        async with OpenAIBackend(server.base_url) as backend:
            coordinator = Coordinator("low", backend)
            for which, step in (("plain", 0), ("plain", 1), ("multi", 0)):
                episode = env.episode(which, step=step, index=4)
                await coordinator.run_round(episode.problem.messages, 1, references=episode.references)
                sent = server.engine.requests[-1]["messages"]
                assert sent == episode.prompt
                assert json.dumps(sent, ensure_ascii=False) == json.dumps(episode.prompt, ensure_ascii=False)
                original = episode.problem.messages[-1]["content"]
                expected = template.render(original_prompt=original, ref_responses=list(episode.references))
                assert sent[-1] == {"role": "user", "content": expected}
    assert env.episode("multi", step=0, index=4).prompt[:3] == chat[:3]


def test_chat_template_helper_renders_the_prompt(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from pacore_agent.testing.tiny_model import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny", train_steps=0))
    episode = SynthesisEnv([_entry()]).episode(0, step=0, index=0)
    text = apply_chat_template(tokenizer, episode.prompt)
    assert text.startswith("<|im_start|>user\nYou are given a problem") and text.endswith(
        "<|im_start|>assistant\n"
    )
    ids = apply_chat_template(tokenizer, episode.prompt, tokenize=True)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert tokenizer.decode(ids) == text
    off = apply_chat_template(tokenizer, episode.prompt, enable_thinking=False)
    assert off.endswith("<think>\n\n</think>\n\n")


# -- rewards and flags -----------------------------------------------------------------------------


def test_math_reward_is_binary_on_the_conclusion() -> None:
    env = SynthesisEnv([_entry()])
    episode = env.episode(0, step=0, index=0)
    right = env.reward(
        episode, "<think>Reference 3 says 7; I checked it.</think>\n\nThe answer is \\boxed{7}."
    )
    assert right.score == 1.0 and right.correct and right.predicted == "7"
    assert right.conclusion == "\n\nThe answer is \\boxed{7}."
    assert right.cross_check and right.cross_check_mentions == 1
    # Only C(trajectory) is graded: a right answer inside the reasoning does not count.
    wrong = env.reward(episode, "<think>\\boxed{7}</think>So \\boxed{8}.")
    assert wrong.score == 0.0 and not wrong.correct and not wrong.cross_check
    assert not right.all_messages_wrong and not right.emergent
    assert right.metrics() == {
        "score": 1.0,
        "acc": 1.0,
        "all_messages_wrong": 0.0,
        "emergent": 0.0,
        "cross_check": 1.0,
        "cross_check_mentions": 1.0,
        "truncated": 0.0,
        "masked": 0.0,
    }


def test_emergent_correctness_flag() -> None:
    env = SynthesisEnv([_entry(correct=[False] * 24)])
    episode = env.episode(0, step=0, index=0)
    assert episode.all_messages_wrong
    result = env.reward(episode, "All references disagree; recomputing gives \\boxed{7}.")
    assert result.all_messages_wrong and result.emergent and result.cross_check
    assert not env.reward(episode, "\\boxed{101}").emergent


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("Reference 12 and Ref 3 agree, unlike ref. 4.", 3),
        ("The references conflict.", 1),
        ("Checking reference #2.", 1),
        ("I refer to prior work; referee reports; preference.", 0),
        ("Cross-checking message 2 against the other solutions.", 3),  # the markers of `pacore analyze`
        ("The answer is 12; a reference point.", 0),
    ],
)
def test_cross_check_words(text: str, mentions: int) -> None:
    assert cross_check_mentions(text) == mentions


def test_code_reward_is_the_pass_rate() -> None:
    entry = _entry("code", domain="code", metadata={"tests": TESTS})
    env = SynthesisEnv([entry])
    episode = env.episode(0, step=0, index=0)
    half = "<think>...</think>```python\na, b = map(int, input().split())\nprint(3 if a == 1 else 0)\n```"
    assert env.reward(episode, half).score == 0.5
    full = env.reward(episode, "```python\nprint(sum(map(int, input().split())))\n```")
    assert full.score == 1.0 and full.correct and full.predicted is None


@pytest.mark.anyio
async def test_async_reward_matches() -> None:
    env = SynthesisEnv([_entry()])
    episode = env.episode(0, step=1, index=1)
    assert (await env.areward(episode, "\\boxed{7}")) == env.reward(episode, "\\boxed{7}")


# -- bad input -------------------------------------------------------------------------------------


def test_pool_with_fewer_messages_than_lo() -> None:
    with pytest.raises(
        EnvDataError, match=r"problem 'small': its pool has 15 messages, fewer than lo=16"
    ) as info:
        SynthesisEnv([_entry("ok"), _entry("small", correct=[True] * 15)])
    assert info.value.problem_id == "small" and isinstance(info.value, UsageError)
    assert len(SynthesisEnv([_entry("small", correct=[True] * 15)], EnvConfig(lo=8, hi=24))) == 1


def test_problem_without_answer_or_tests() -> None:
    with pytest.raises(EnvDataError, match="'noanswer': a math problem without an answer"):
        SynthesisEnv([_entry("noanswer", answer="")])
    with pytest.raises(EnvDataError, match="'notests': a code problem without tests"):
        SynthesisEnv([_entry("notests", domain="code")])
    with pytest.raises(EnvDataError, match="'badtests': pool entry 'badtests': malformed metadata"):
        SynthesisEnv([_entry("badtests", domain="code", metadata={"tests": [{"stdin": "x"}]})])
    with pytest.raises(EnvDataError, match="appears twice"):
        SynthesisEnv([_entry("twice"), _entry("twice")])
    with pytest.raises(UsageError, match="no problem 'missing'"):
        SynthesisEnv([_entry()]).episode("missing", step=0, index=0)


def test_reward_function_that_raises_is_wrapped_with_the_problem_id() -> None:
    def broken(conclusion: str, problem: TrainProblem) -> float:
        raise KeyError("grader lost its table")

    env = SynthesisEnv([_entry("p17")], reward_fn=broken)
    episode = env.episode(0, step=0, index=0)
    with pytest.raises(
        RewardError, match=r"reward of problem 'p17': the reward function raised KeyError"
    ) as info:
        env.reward(episode, "\\boxed{7}")
    assert info.value.problem_id == "p17" and isinstance(info.value.__cause__, KeyError)
    assert isinstance(info.value, PacoreRuntimeError)
    out_of_range = SynthesisEnv([_entry("p18")], reward_fn=lambda conclusion, problem: 2.0)
    with pytest.raises(RewardError, match=r"'p18'.*returned 2.0, not a score in \[0, 1\]"):
        out_of_range.reward(out_of_range.episode(0, step=0, index=0), "x")
    as_bool = SynthesisEnv([_entry("p19")], reward_fn=lambda conclusion, problem: True)
    assert as_bool.reward(as_bool.episode(0, step=0, index=0), "x").score == 1.0


def test_custom_reward_function_sees_the_conclusion_and_problem() -> None:
    seen: list[tuple[str, str]] = []

    def judge(conclusion: str, problem: TrainProblem) -> float:
        seen.append((conclusion, problem.id))
        return 0.25

    env = SynthesisEnv([_entry("j")], reward_fn=judge)
    result = env.reward(env.episode(0, step=0, index=0), "<think>long</think>short")
    assert seen == [("short", "j")] and result.score == 0.25 and not result.correct


CUT_OFF = "<think>\nLet me add them: 40 + 2... so \\boxed{42}. Hmm wait, let me double-check the"
"""A response cut off by the length limit inside its reasoning, a right \\boxed{} written on the way."""


def test_a_truncated_response_with_a_boxed_answer_in_its_reasoning_earns_0_by_default() -> None:
    entry = _entry()
    entry = entry.model_copy(update={"answer": "42"})
    env = SynthesisEnv([entry])
    episode = env.episode(0, step=0, index=0)
    # C returns the whole text (no </think>) and it holds the right answer: graded, it would earn 1
    assert env.reward(episode, CUT_OFF).conclusion == CUT_OFF
    cut = env.reward(episode, CUT_OFF, "length")
    assert cut.score == 0.0 and not cut.correct and cut.truncated and not cut.masked
    assert cut.metrics()["truncated"] == 1.0
    # the other settings: mask leaves it out of the loss, grade grades it (flagged either way)
    masked = SynthesisEnv([entry], EnvConfig(truncation="mask")).reward(episode, CUT_OFF, "length")
    assert masked.score == 0.0 and masked.truncated and masked.masked
    graded = SynthesisEnv([entry], EnvConfig(truncation="grade")).reward(episode, CUT_OFF, "length")
    assert graded.score == 1.0 and graded.truncated and not graded.masked
    # a response that finished is graded as ever
    done = env.reward(episode, "<think>40 + 2 = 42</think>\n\n\\boxed{42}", "stop")
    assert done.score == 1.0 and not done.truncated
    # without a finish reason (verl's reward function), a reasoning never closed counts as cut off
    assert env.reward(episode, CUT_OFF).truncated and env.reward(episode, CUT_OFF).score == 0.0
    with pytest.raises(UsageError, match="truncation must be"):
        EnvConfig(truncation="drop")  # type: ignore[arg-type]
