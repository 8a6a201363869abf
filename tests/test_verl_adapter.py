"""The verl adapter: dataset, reward function, data scripts and launch scripts, tested without GPUs.

Everything but the last section runs without verl. With verl importable (a scratch environment:
``pip install verl==0.9.1`` on CPU torch), the last section composes the launch scripts' overrides against
verl's own Hydra config, runs verl's config validation, and loads the dataset and reward function through
verl's own hooks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pacore_agent import SimConfig, SimServer
from pacore_agent.evaluation.store import PoolEntry, PoolMessage
from pacore_agent.exceptions import UsageError
from training.data import arithmetic_problems
from training.env import EnvConfig, EnvDataError, RewardError, SynthesisEnv
from training.pool import load_pool_entries, write_pool_entries
from training.verl import overrides as ov
from training.verl.dataset import PacoreSynthesisDataset
from training.verl.reward import compute_score

try:
    import torch
except ImportError:  # the adapter works without torch; only the DataLoader tests need it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

VERL_DIR = Path(__file__).resolve().parents[1] / "training" / "verl"
SCRIPTS = (VERL_DIR / "ppo.sh",)  # the launch both stage scripts source
STAGES = (VERL_DIR / "stage1.sh", VERL_DIR / "stage2.sh")
TESTS = [
    {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
    {"input": "2 2\n", "output": "4\n", "testtype": "stdin"},
]


def _math(problem_id: str, count: int = 24, *, length: int = 0) -> PoolEntry:
    messages = [
        PoolMessage(message=f"{'x' * length}So \\boxed{{{7 if i % 4 == 0 else 50 + i}}}.", correct=i % 4 == 0)
        for i in range(count)
    ]
    return PoolEntry(problem_id=problem_id, problem=f"{problem_id}: find it.", answer="7", messages=messages)


def _code(problem_id: str) -> PoolEntry:
    program = "```python\nprint(sum(map(int, input().split())))\n```"
    messages = [PoolMessage(message=program if i % 2 else "no code", correct=bool(i % 2)) for i in range(24)]
    return PoolEntry(
        problem_id=problem_id,
        problem="Add two ints.",
        domain="code",
        messages=messages,
        metadata={"tests": TESTS},
    )


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    return write_pool_entries(tmp_path / "stage1.jsonl", [_math("m0"), _math("m1"), _code("c0")])


# -- the dataset -----------------------------------------------------------------------------------


def test_items_have_rlhf_dataset_layout(pool_file: Path) -> None:
    dataset = PacoreSynthesisDataset(
        [str(pool_file)], tokenizer=None, config={"prompt_key": "prompt", "seed": 5}
    )
    assert len(dataset) == 3
    item = dataset[1]
    if torch is None:
        assert "dummy_tensor" not in item
        item["dummy_tensor"] = None
    else:
        assert isinstance(dataset, torch.utils.data.Dataset)
        assert item["dummy_tensor"].dtype == torch.uint8 and item["dummy_tensor"].tolist() == [0]
    assert set(item) == {
        "prompt",
        "raw_prompt",
        "data_source",
        "ability",
        "reward_model",
        "extra_info",
        "index",
        "tools_kwargs",
        "interaction_kwargs",
        "dummy_tensor",
    }
    env = SynthesisEnv(load_pool_entries(pool_file), EnvConfig(seed=5))
    episode = env.episode(1, step=0, index=1)  # the first draw of item 1 in the main process: step 0
    assert item["prompt"] == item["raw_prompt"] == episode.prompt
    assert item["data_source"] == "pacore/math" and item["ability"] == "math"
    assert item["reward_model"] == {"style": "rule", "ground_truth": "7"}
    info = item["extra_info"]
    assert info["problem_id"] == "m1" and info["index"] == 1 and info["step"] == 0 and info["draw"] == 0
    assert info["message_indices"] == list(episode.message_indices)
    assert info["message_correct"] == [i % 4 == 0 for i in episode.message_indices]
    assert 16 <= info["num_messages"] == len(episode.references) <= 24
    assert item["index"] == 1 and item["tools_kwargs"] == {} and item["interaction_kwargs"] == {}
    code = dataset[2]
    assert code["data_source"] == "pacore/code"
    assert (
        compute_score(
            code["data_source"],
            "```python\nprint(3)\n```",
            code["reward_model"]["ground_truth"],
            code["extra_info"],
        )["score"]
        == 0.5
    )


def test_every_getitem_draws_a_fresh_message_set_reproducibly(pool_file: Path) -> None:
    config = {"pacore": {"lo": 16, "hi": 24, "seed": 3}}
    dataset = PacoreSynthesisDataset(pool_file, config=config)
    draws = [dataset[0]["extra_info"]["message_indices"] for _ in range(5)]
    assert len({tuple(d) for d in draws}) == 5
    assert [dataset[0]["extra_info"]["draw"] for _ in range(2)] == [5, 6]
    replay = PacoreSynthesisDataset(pool_file, config=config)
    assert [replay[0]["extra_info"]["message_indices"] for _ in range(5)] == draws
    other_seed = PacoreSynthesisDataset(pool_file, config={"pacore": {"seed": 4}})
    assert other_seed[0]["extra_info"]["message_indices"] != draws[0]


def _draws_per_epoch(
    pool_file: Path, workers: int, seed: int, epochs: int = 2
) -> list[dict[str, tuple[int, ...]]]:
    dataset = PacoreSynthesisDataset(pool_file, config={"pacore": {"seed": 1}})
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=3,
        shuffle=True,
        num_workers=workers,
        collate_fn=lambda items: items,
        generator=torch.Generator().manual_seed(seed),
    )
    result = []
    for _ in range(epochs):
        seen = {}
        for batch in loader:
            for item in batch:
                seen[item["extra_info"]["problem_id"]] = tuple(item["extra_info"]["message_indices"])
        result.append(seen)
    return result


@needs_torch
@pytest.mark.parametrize("workers", [0, 2])
def test_each_epoch_sees_new_message_sets(pool_file: Path, workers: int) -> None:
    first, second = _draws_per_epoch(pool_file, workers, seed=0)
    assert set(first) == set(second) == {"m0", "m1", "c0"}
    assert all(first[key] != second[key] for key in first)
    # A seeded loader repeats the whole sequence of draws.
    assert _draws_per_epoch(pool_file, workers, seed=0) == [first, second]


class _CharTokenizer:
    """One token per character of each message (enough to test the length filter)."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        text = "".join(m["content"] for m in conversation)
        return list(range(len(text))) if kwargs.get("tokenize") else text


def test_overlong_problems_are_dropped_up_front(tmp_path: Path) -> None:
    path = write_pool_entries(tmp_path / "set.jsonl", [_math("short"), _math("long", length=400)])
    config = {"max_prompt_length": 4000, "filter_overlong_prompts": True}
    dataset = PacoreSynthesisDataset(path, tokenizer=_CharTokenizer(), config=config)
    assert dataset.env.problem_ids == ["short"]
    kept = PacoreSynthesisDataset(
        path, tokenizer=_CharTokenizer(), config={**config, "filter_overlong_prompts": False}
    )
    assert len(kept) == 2
    assert len(PacoreSynthesisDataset(path, max_samples=1)) == 1


def test_dataset_bad_input(tmp_path: Path) -> None:
    small = write_pool_entries(tmp_path / "small.jsonl", [_math("small", count=10)])
    with pytest.raises(EnvDataError, match="'small': its pool has 10 messages, fewer than lo=16"):
        PacoreSynthesisDataset(small)
    assert len(PacoreSynthesisDataset(small, config={"pacore": {"lo": 8, "hi": 10}})) == 1
    no_answer = write_pool_entries(
        tmp_path / "noanswer.jsonl", [_math("x").model_copy(update={"answer": ""})]
    )
    with pytest.raises(EnvDataError, match="'x': a math problem without an answer"):
        PacoreSynthesisDataset(no_answer)
    with pytest.raises(FileNotFoundError):
        PacoreSynthesisDataset(tmp_path / "missing.jsonl")


def test_dataset_reads_an_omegaconf_config(pool_file: Path) -> None:
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create({"prompt_key": "chat", "seed": None, "pacore": {"lo": 18, "hi": 18}})
    item = PacoreSynthesisDataset(pool_file, config=config)[0]
    assert item["chat"] == item["raw_prompt"] and item["extra_info"]["num_messages"] == 18


# -- the reward function ---------------------------------------------------------------------------


def test_compute_score_math_and_flags() -> None:
    info = {"problem_id": "m", "domain": "math", "message_correct": [False, False, False]}
    right = compute_score("pacore/math", "<think>Reference 2 is off.</think>So \\boxed{7}.", "7", info)
    assert right == {
        "score": 1.0,
        "acc": 1.0,
        "all_messages_wrong": 1.0,
        "emergent": 1.0,
        "cross_check": 1.0,
        "cross_check_mentions": 1.0,
        "truncated": 0.0,
        "masked": 0.0,
        "num_messages": 3.0,
    }
    wrong = compute_score(
        "pacore/math", "<think>\\boxed{7}</think>\\boxed{8}", "7", {"message_correct": [True]}
    )
    assert wrong["score"] == 0.0 and wrong["all_messages_wrong"] == 0.0 and wrong["emergent"] == 0.0
    # verl collates extra_info values into numpy arrays and may pass extra keyword arguments.
    numpy = pytest.importorskip("numpy")
    flags = numpy.array([False, True], dtype=object)
    result = compute_score(
        data_source="pacore/math",
        solution_str="\\boxed{7}",
        ground_truth="7",
        extra_info={"message_correct": flags, "num_turns": 2},
        reward_router_address=None,
    )
    assert result["score"] == 1.0 and result["num_messages"] == 2.0
    assert set(result) == set(right)  # the same keys on every response: verl stacks them per batch


def test_compute_score_gives_a_truncated_response_0_by_default() -> None:
    cut_off = "<think>\nLet me add them: 40 + 2... so \\boxed{42}. Hmm wait, let me double-check the"
    info = {"problem_id": "m", "domain": "math", "message_correct": [False, True]}
    # verl passes the text alone: a reasoning never closed can only have hit the length limit
    result = compute_score("pacore/math", cut_off, "42", info)
    assert result["score"] == 0.0 and result["acc"] == 0.0 and result["truncated"] == 1.0
    graded = compute_score("pacore/math", cut_off, "42", info, truncation="grade")
    assert graded["score"] == 1.0 and graded["truncated"] == 1.0
    # a reward manager that knows the finish reason passes it in extra_info
    closed = "<think>40 + 2</think>\\boxed{42}"
    assert compute_score("pacore/math", closed, "42", info)["score"] == 1.0
    stopped = compute_score("pacore/math", closed, "42", {**info, "finish_reason": "length"})
    assert stopped["score"] == 0.0 and stopped["truncated"] == 1.0


def test_compute_score_code_is_the_pass_rate() -> None:
    import json

    truth = json.dumps(TESTS)
    half = "```python\na, b = map(int, input().split())\nprint(3 if a == 1 else 0)\n```"
    assert compute_score("pacore/code", half, truth, {"domain": "code"})["score"] == 0.5
    assert compute_score("pacore/code", "no program", truth, {})["score"] == 0.0


def test_compute_score_errors_name_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="cannot tell the domain"):
        compute_score("openai/gsm8k", "\\boxed{1}", "1", {})
    with pytest.raises(UsageError, match="'c9': the code ground truth holds no tests"):
        compute_score("pacore/code", "x", "42", {"problem_id": "c9"})

    def broken(*args: object, **kwargs: object) -> float:
        raise OSError("sandbox directory vanished")

    monkeypatch.setattr("training.verl.reward.default_reward", broken)
    with pytest.raises(RewardError, match="reward of problem 'm3': the reward function raised OSError"):
        compute_score("pacore/math", "x", "7", {"problem_id": "m3"})


def test_compute_score_agrees_with_the_environment(pool_file: Path) -> None:
    dataset = PacoreSynthesisDataset(pool_file)
    env = dataset.env
    for position in range(len(env)):
        item = dataset.row(env.episode(position, step=9, index=position))
        episode = env.episode(position, step=9, index=position)
        for response in ("<think>Ref 1</think>\\boxed{7}", "\\boxed{51}", "```python\nprint(3)\n```"):
            expected = env.reward(episode, response)
            got = compute_score(
                item["data_source"], response, item["reward_model"]["ground_truth"], item["extra_info"]
            )
            assert got["score"] == expected.score and got["emergent"] == float(expected.emergent)


# -- the launch scripts (static: runs everywhere) --------------------------------------------------


def _values(script: Path) -> dict[str, str]:
    return {o.key: o.value for o in ov.script_overrides(script)}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_keys_exist_in_verl_config(script: Path) -> None:
    overrides = ov.script_overrides(script)
    assert len(overrides) > 40
    assert ov.check_keys(overrides) == []
    added = [o for o in overrides if o.prefix]
    assert {o.key for o in added} == {"data.pacore.lo", "data.pacore.hi", "data.pacore.seed"}
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_sets_the_paper_hyperparameters(script: Path) -> None:
    values = _values(script)
    paper = {
        "algorithm.adv_estimator": "gae",
        "algorithm.gamma": "1.0",
        "algorithm.lam": "1.0",
        "algorithm.use_kl_in_reward": "False",
        "algorithm.kl_ctrl.kl_coef": "0.0",
        "data.train_batch_size": "16",
        "actor_rollout_ref.rollout.n": "64",
        "actor_rollout_ref.rollout.name": "sglang",
        "actor_rollout_ref.rollout.temperature": "1.0",
        "actor_rollout_ref.rollout.top_p": "1.0",
        "actor_rollout_ref.actor.optim.lr": "2e-6",
        "critic.optim.lr": "5e-6",
        "actor_rollout_ref.actor.ppo_epochs": "1",
        "critic.ppo_epochs": "1",
        "actor_rollout_ref.actor.ppo_mini_batch_size": "16",  # = train_batch_size: one update per step
        "actor_rollout_ref.actor.use_kl_loss": "False",
        "actor_rollout_ref.actor.kl_loss_coef": "0.0",
        "actor_rollout_ref.actor.entropy_coeff": "0",
        "data.pacore.lo": "16",
        "data.pacore.hi": "24",
        "data.custom_cls.path": "pkg://training.verl.dataset",
        "data.custom_cls.name": "PacoreSynthesisDataset",
        "reward.custom_reward_function.path": "pkg://training.verl.reward",
        "reward.custom_reward_function.name": "compute_score",
    }
    assert {key: values.get(key) for key in paper} == paper


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_local_trainer_and_verl_launch_share_one_recipe(script: Path) -> None:
    from training.env import DEFAULT_HI, DEFAULT_LO
    from training.ppo import PPOConfig
    from training.train import TrainConfig

    values = _values(script)
    ppo = PPOConfig()  # the local trainer's defaults (python -m training.train)
    shared = {
        "algorithm.gamma": ppo.gamma,
        "algorithm.lam": ppo.lam,
        "data.train_batch_size": ppo.problems_per_step,
        "actor_rollout_ref.rollout.n": ppo.responses_per_problem,
        "actor_rollout_ref.rollout.temperature": ppo.temperature,
        "actor_rollout_ref.actor.optim.lr": ppo.actor_lr,
        "critic.optim.lr": ppo.critic_lr,
        "actor_rollout_ref.actor.optim.weight_decay": ppo.weight_decay,
        "critic.optim.weight_decay": ppo.weight_decay,
        "actor_rollout_ref.actor.clip_ratio": ppo.clip_eps,
        "critic.cliprange_value": ppo.value_clip_eps,
        "actor_rollout_ref.actor.grad_clip": ppo.max_grad_norm,
        "critic.grad_clip": ppo.max_grad_norm,
        "actor_rollout_ref.actor.ppo_epochs": ppo.ppo_epochs,
        "critic.ppo_epochs": ppo.ppo_epochs,
        "actor_rollout_ref.actor.ppo_mini_batch_size": ppo.problems_per_step // ppo.actor_steps,
        "critic.ppo_mini_batch_size": ppo.problems_per_step // ppo.critic_steps,
        "actor_rollout_ref.actor.entropy_coeff": ppo.entropy_coef,
        "data.pacore.lo": DEFAULT_LO,
        "data.pacore.hi": DEFAULT_HI,
    }
    assert {key: float(values[key]) for key in shared} == {key: float(v or 0) for key, v in shared.items()}
    # both average the losses over tokens; verl's GAE whitens advantages over the batch as ours does
    assert values["actor_rollout_ref.actor.loss_agg_mode"] == values["critic.loss_agg_mode"] == "token-mean"
    assert ppo.whiten_advantages
    # verl draws one message set per item and repeats it for the item's n responses: so does the default
    assert TrainConfig.__dataclass_fields__["shared_message_set"].default is True


@pytest.mark.parametrize("stage", STAGES, ids=lambda p: p.name)
def test_stage_scripts_set_their_defaults_and_source_the_shared_launch(stage: Path) -> None:
    text = stage.read_text()
    name = stage.stem
    assert f"EXPERIMENT=${{EXPERIMENT:-{name}}}" in text
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/ppo.sh" "$@"' in text
    assert subprocess.run(["bash", "-n", str(stage)], check=False).returncode == 0
    assert os.access(stage, os.X_OK)
    # Without MODEL the script stops at once with a message saying what to set.
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "TRAIN_FILE")}
    done = subprocess.run(["bash", str(stage)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode != 0 and "set MODEL" in done.stderr


def test_key_check_catches_mistakes() -> None:
    bad = [
        ov.Override("algorithm.gama", "1.0"),
        ov.Override("data.train_batch_size", "16", "+"),
        ov.Override("trainer.my_flag", "1", "+"),
        ov.Override("data.seed", "1"),
        ov.Override("data.seed", "2"),
    ]
    assert ov.check_keys(bad) == [
        "algorithm.gama: not a key of verl's PPO trainer config",
        "+data.train_batch_size: verl already has this key; drop the '+'",
        "+trainer.my_flag: the adapter only adds keys under data.pacore.",
        "data.seed: set twice",
    ]
    assert "actor_rollout_ref.rollout.n" in ov.verl_config_keys()


def test_script_parser_follows_bash_quoting(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text(
        "#!/bin/bash\n# python3 -m verl.trainer.main_ppo commented.out=1\nX=1\n"
        "python3 -m verl.trainer.main_ppo \\\n    a.b=1 \\\n    c.d=\"['$X']\" \\\n"
        '    +data.pacore.lo=2 \\\n    e=\'["console"]\' \\\n    "$@"\n'
    )
    assert [o.text for o in ov.script_overrides(script)] == [
        "a.b=1",
        "c.d=['$X']",
        "+data.pacore.lo=2",
        'e=["console"]',
    ]
    script.write_text("echo nothing\n")
    with pytest.raises(ValueError, match=re.escape("no 'python3 -m verl.trainer.main_ppo' command")):
        ov.script_overrides(script)


# -- the data scripts, end to end on the simulated server ------------------------------------------


@pytest.mark.anyio
async def test_stage1_and_stage2_scripts_on_the_simulated_server(tmp_path: Path) -> None:
    from training.verl import stage1_data, stage2_filter

    problems = arithmetic_problems(6, seed=2)
    answers = {p.problem: p.answer for p in problems}
    async with SimServer(SimConfig(seed=1, answers=answers, accuracy=0.2, synth_recover=0.3)) as server:
        endpoint = ["--base-url", server.base_url, "--seed", "2", "--concurrency", "16"]
        args = stage1_data.parser().parse_args(
            [
                "--arithmetic",
                "6",
                "--pool-dir",
                str(tmp_path / "pool"),
                "--output",
                str(tmp_path / "s1.jsonl"),
                *endpoint,
            ]
        )
        summary1 = await stage1_data.run(args)
        assert summary1["total"] == 6 and summary1["pool"]["built"] == 6 and not summary1["pool"]["failed"]
        assert len(server.engine.requests) == 6 * 24
        again = await stage1_data.run(args)  # a rerun resumes: nothing is generated twice
        assert again["pool"]["skipped"] == 6 and len(server.engine.requests) == 6 * 24
        assert summary1["kept"] >= 1
        args2 = stage2_filter.parser().parse_args(
            [
                "--input",
                str(tmp_path / "s1.jsonl"),
                "--output",
                str(tmp_path / "s2.jsonl"),
                "--samples",
                "3",
                *endpoint,
            ]
        )
        summary2 = await stage2_filter.run(args2)
    assert summary2["total"] == summary1["kept"] and (tmp_path / "s2.summary.json").is_file()
    if summary2["kept"]:
        assert len(PacoreSynthesisDataset(tmp_path / "s2.jsonl")) == summary2["kept"]


def test_data_scripts_have_a_command_line() -> None:
    for module in ("training.verl.stage1_data", "training.verl.stage2_filter"):
        out = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
        )
        assert "--base-url" in out.stdout and "--output" in out.stdout


# -- against verl itself (skipped where verl is not installed) -------------------------------------

ENVIRONMENT = {
    "TRAIN_FILE": "TRAIN",
    "VAL_FILE": "TRAIN",
    "NNODES": "2",
    "GPUS_PER_NODE": "8",
    "ROLLOUT_TP": "2",
    "MAX_PROMPT_LENGTH": "32768",
    "MAX_RESPONSE_LENGTH": "32768",
    "MAX_TOKENS_PER_GPU": "65536",
    "TOTAL_EPOCHS": "1",
    "SAVE_FREQ": "20",
    "SEED": "0",
    "PROJECT": "pacore",
    "EXPERIMENT": "test",
}


@pytest.fixture(scope="module")
def verl_config_dir() -> Path:
    # CI's verl stage sets PACORE_REQUIRE_VERL so that a broken install fails instead of skipping.
    if os.environ.get("PACORE_REQUIRE_VERL"):
        import verl
    else:
        verl = pytest.importorskip("verl")
    return Path(verl.__file__).parent / "trainer" / "config"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from pacore_agent.testing.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), train_steps=0)


def _compose(config_dir: Path, script: Path, model: Path, train: Path) -> Any:
    from hydra import compose, initialize_config_dir

    environment = {
        **ENVIRONMENT,
        "MODEL": str(model),
        "CRITIC_MODEL": str(model),
        "TRAIN_FILE": str(train),
        "VAL_FILE": str(train),
    }
    texts = [
        re.sub(r"\$(\w+)", lambda m: environment[m.group(1)], o.text) for o in ov.script_overrides(script)
    ]
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name="ppo_trainer", overrides=texts)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_compose_and_validate_against_verl(
    verl_config_dir: Path, tiny_model: Path, pool_file: Path, script: Path
) -> None:
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    config = _compose(verl_config_dir, script, tiny_model, pool_file)
    values = _values(script)
    for key in values:
        assert OmegaConf.select(config, key, default="<missing>") != "<missing>", key
    assert config.actor_rollout_ref.rollout.n == 64 and config.algorithm.adv_estimator == "gae"
    assert config.data.pacore == {"lo": 16, "hi": 24, "seed": 0}
    assert need_critic(config) and not need_reference_policy(
        config
    )  # GAE needs a critic; no KL, no reference
    validate_config(config, use_reference_policy=False, use_critic=True)


def test_verl_loads_the_dataset_and_reward_through_its_hooks(
    verl_config_dir: Path, tiny_model: Path, pool_file: Path
) -> None:
    from transformers import AutoTokenizer
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.dataset.rl_dataset import collate_fn, get_dataset_class

    config = _compose(verl_config_dir, SCRIPTS[0], tiny_model, pool_file)
    assert get_dataset_class(config.data) is PacoreSynthesisDataset
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    dataset = create_rl_dataset(config.data.train_files, config.data, tokenizer, None, max_samples=-1)
    assert isinstance(dataset, PacoreSynthesisDataset) and len(dataset) == 3
    batch = collate_fn([dataset[i] for i in range(3)])
    assert batch["dummy_tensor"].shape == (3, 1)
    assert list(batch["data_source"]) == ["pacore/math", "pacore/math", "pacore/code"]
    reward_fn = get_custom_reward_fn(config)
    assert reward_fn is not None
    info = batch["extra_info"][0]
    result = reward_fn(
        data_source="pacore/math", solution_str="\\boxed{7}", ground_truth="7", extra_info=info
    )
    assert result["score"] == 1.0 and result["num_messages"] == info["num_messages"]
