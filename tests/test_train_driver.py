"""The training driver (`python -m training.train`): CLI, a tiny run end to end, crash and resume, refusals.

The runs are real subprocesses on a tiny Qwen3 chat model built offline, a hand-made pool of three
addition problems with four messages each, 2 problems x 2 responses per step and 16-token responses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.ppo_chat import sevens
from pacore_agent.evaluation.store import PoolEntry, PoolMessage
from pacore_agent.exceptions import UsageError
from training.checkpoint import (
    capture_rng_state,
    checkpoint_metadata,
    checkpoint_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from training.env import RewardResult
from training.metrics import StepLog, read_jsonl
from training.pool import write_pool_entries
from training.ppo import PPOConfig, PPOTrainer
from training.train import (
    KILL_AT_STEP_ENV,
    FingerprintError,
    TrainConfig,
    build_parser,
    config_fingerprint,
    episode_metrics,
    epoch_order,
    fingerprint_differences,
    latest_checkpoint,
    main,
    make_rollout,
    parse_args,
    pool_digest,
    step_positions,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 5
METRIC_KEYS = (
    "step",
    "losses/policy_loss",
    "losses/value_loss",
    "charts/reward_mean",
    "charts/response_length",
    "charts/accuracy",
    "charts/emergent_rate",
    "charts/cross_check_rate",
    "synthesis/markers",  # training.diagnostics: the behaviour `pacore analyze` measures
    "synthesis/emergent",
    "synthesis/shortcut",
    "synthesis/plurality_right",
    "charts/clipfrac",
    "charts/approx_kl",
    "charts/explained_variance",
    "charts/tokens_per_s",
    "time/step_s",
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pool_entries(count: int = 3, messages: int = 4) -> list[PoolEntry]:
    rng = random.Random(0)
    entries = []
    for k in range(count):
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        pooled = []
        for i in range(messages):
            answer = a + b if i % 2 == 0 else a + b + 1 + i
            pooled.append(
                PoolMessage(message=f"{a}+{b}={answer}\n\n\\boxed{{{answer}}}", correct=i % 2 == 0, score=1.0)
            )
        entries.append(
            PoolEntry(problem_id=f"add-{k}", problem=f"What is {a}+{b}?", answer=str(a + b), messages=pooled)
        )
    return entries


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model and the pool, built once for the module."""
    from pacore_agent.testing.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("train-driver")
    model = build_tiny_model(root / "tiny")
    pool = write_pool_entries(root / "pool.jsonl", _pool_entries())
    return {"root": root, "model": model, "pool": pool}


def _train(
    *options: str, env: dict[str, str] | None = None, timeout: float = 100
) -> subprocess.CompletedProcess[str]:
    """``python -m training.train OPTIONS`` on one thread, without progress bars."""
    environ = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "training.train", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )


def _tiny_options(setup: dict[str, Path], out: Path) -> list[str]:
    """The model, pool and output folder of ``setup``, with the small batch every driver run here uses."""
    return [
        "--model",
        str(setup["model"]),
        "--pool",
        str(setup["pool"]),
        "--out",
        str(out),
        "--problems-per-step",
        "2",
        "--responses-per-problem",
        "2",
        "--min-messages",
        "2",
        "--max-messages",
        "4",
        "--actor-lr",
        "1e-4",
        "--critic-lr",
        "1e-4",
        "--reward-workers",
        "2",
    ]


def _run(
    workspace: dict[str, Path],
    out: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 100,
) -> subprocess.CompletedProcess[str]:
    options = ["--steps", str(STEPS), "--save-every", "2", "--max-response-tokens", "16", "--stage", "none"]
    return _train(*_tiny_options(workspace, out), *options, *extra, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def full_run(workspace: dict[str, Path]) -> Path:
    """An uninterrupted tiny run of STEPS steps, checkpointing every 2."""
    out = workspace["root"] / "full"
    done = _run(workspace, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


# -- the command line ------------------------------------------------------------------------------


def test_help_documents_every_option_with_the_paper_defaults() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training.train", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    )
    text = done.stdout
    for spec in dataclasses.fields(TrainConfig):
        assert "--" + spec.name.replace("_", "-") in text, spec.name
    for option, default in [
        ("--actor-lr ACTOR_LR", "(default: 2e-06)"),
        ("--critic-lr CRITIC_LR", "(default: 5e-06)"),
        ("--gamma GAMMA", "(default: 1.0)"),
        ("--lam LAM", "(default: 1.0)"),
        ("--problems-per-step PROBLEMS_PER_STEP", "(default: 16)"),
        ("--responses-per-problem RESPONSES_PER_PROBLEM", "(default: 64)"),
        ("--entropy-coef ENTROPY_COEF", "(default: 0.0)"),
        ("--ppo-epochs PPO_EPOCHS", "(default: 1)"),
        ("--min-messages MIN_MESSAGES", "(default: 16)"),
        ("--max-messages MAX_MESSAGES", "(default: 24)"),
        ("--temperature TEMPERATURE", "(default: 1.0)"),
        ("--rollout {hf,sglang}", "(default: hf)"),
    ]:
        block = _help_block(text, option)
        assert default in block, block


def _help_block(text: str, option: str) -> str:
    """The help of one option: its line and the indented lines under it, joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(option))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 6) or line.strip().startswith("-"):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


def test_every_field_has_a_flag_with_help() -> None:
    parser = build_parser()
    helps = {action.dest: action.help for action in parser._actions}
    for spec in dataclasses.fields(TrainConfig):
        assert helps.get(spec.name), spec.name


@pytest.mark.parametrize(
    ("field", "value"), [("precision", "fp16"), ("stage", "3"), ("bf16", "yes"), ("truncation", "drop")]
)
def test_a_config_built_in_code_is_held_to_the_flags_choices(field: str, value: str) -> None:
    with pytest.raises(UsageError, match=f"--{field} must be one of .*, got '{value}'"):
        TrainConfig(model="m", out="o", pool="p", **{field: value})  # type: ignore[arg-type]


def test_a_missing_pool_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.jsonl"
    assert main(["--model", "m", "--out", str(tmp_path / "run"), "--pool", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err


def test_parse_args_builds_the_config_and_checks_it(tmp_path: Path) -> None:
    config = parse_args(["--model", "m", "--out", str(tmp_path), "--pool", "p.jsonl", "--tis-cap", "2"])
    assert config.ppo_config() == dataclasses.replace(PPOConfig(), tis_cap=2.0)
    assert config.env_config().lo == 16 and config.env_config().hi == 24
    assert (
        parse_args(["--model", "m", "--out", "o", "--pool", "p", "--value-clip-eps", "none"]).value_clip_eps
        is None
    )
    many = parse_args(
        ["--model", "m", "--out", "o", "--problems", "a", "--problems", "b", "--build-pool", "sim"]
    )
    assert many.problems == ("a", "b")
    for argv, message in [
        (["--pool", "p", "--problems", "a"], "either --pool"),
        ([], "either --pool"),
        (["--arithmetic", "3"], "add --build-pool"),
        (["--problems", "a", "--build-pool", "openai"], "--pool-base-url"),
        (["--pool", "p", "--min-messages", "5", "--max-messages", "4"], "lo <= hi"),
        (["--pool", "p", "--actor-lr", "0"], "actor_lr must be positive"),
        (["--pool", "p", "--sglang-url", "http://x"], "need --rollout sglang"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_args(["--model", "m", "--out", "o", *argv])


# -- pure helpers ----------------------------------------------------------------------------------


def test_data_order_is_a_fresh_permutation_every_epoch() -> None:
    orders = [epoch_order(7, 3, epoch) for epoch in range(4)]
    assert all(sorted(order) == list(range(7)) for order in orders)
    assert len(set(orders)) == 4
    stream = step_positions(0, 28, 7, 3)
    assert stream == [p for order in orders for p in order]
    # any slice of the stream is the same whoever computes it and from wherever it starts
    assert step_positions(10, 4, 7, 3) == stream[10:14]
    assert epoch_order(7, 4, 0) != orders[0]


def test_episode_metrics_rates() -> None:
    def result(correct: bool, all_wrong: bool, mentions: int) -> RewardResult:
        return RewardResult(
            score=float(correct),
            correct=correct,
            predicted=None,
            conclusion="",
            all_messages_wrong=all_wrong,
            emergent=correct and all_wrong,
            cross_check=mentions > 0,
            cross_check_mentions=mentions,
        )

    metrics = episode_metrics(
        [result(True, True, 2), result(False, True, 0), result(True, False, 0), result(False, False, 1)]
    )
    assert metrics["charts/accuracy"] == 0.5
    assert metrics["charts/all_messages_wrong_frac"] == 0.5
    assert metrics["charts/emergent_rate"] == 0.5 and metrics["charts/emergent_frac"] == 0.25
    assert metrics["charts/cross_check_rate"] == 0.5 and metrics["charts/cross_check_mentions"] == 0.75
    none_wrong = episode_metrics([result(True, False, 0)])
    assert none_wrong["charts/emergent_rate"] != none_wrong["charts/emergent_rate"]  # NaN


def test_fingerprint_covers_model_pool_seed_and_batch(tmp_path: Path) -> None:
    entries = _pool_entries()
    config = TrainConfig(model="m", out=str(tmp_path), pool="p")
    base = config_fingerprint(config, entries)
    assert pool_digest(list(reversed(entries))) == base["pool"]  # order does not matter
    changed = [e.model_copy() for e in entries]
    changed[0] = changed[0].model_copy(update={"answer": "999"})
    assert config_fingerprint(config, changed)["pool"] != base["pool"]
    other = config_fingerprint(dataclasses.replace(config, seed=1, problems_per_step=8), entries)
    assert fingerprint_differences(base, other) == [
        "seed: 0 in the checkpoint, 1 now",
        "problems_per_step: 16 in the checkpoint, 8 now",
    ]
    assert fingerprint_differences({}, base)[0] == "model: nothing in the checkpoint, 'm' now"
    # settings outside the fingerprint (learning rates, steps, engine) may change on resume
    assert config_fingerprint(dataclasses.replace(config, actor_lr=1e-3, steps=9), entries) == base


def test_step_log_truncates_steps_after_a_checkpoint(tmp_path: Path) -> None:
    log = StepLog(tmp_path / "m.jsonl")
    for step in range(4):
        log.append({"step": step, "value": float("nan") if step == 1 else step})
    assert log.records()[1]["value"] is None  # NaN is written as null, strict JSON
    assert log.truncate(2) == 2
    assert [r["step"] for r in log.records()] == [0, 1]
    with (tmp_path / "m.jsonl").open("a") as handle:
        handle.write('{"step": 2, "val')  # torn by a crash
    assert [r["step"] for r in read_jsonl(tmp_path / "m.jsonl")] == [0, 1]


# -- checkpoints: metadata and random states (backwards compatible) ---------------------------------


def test_checkpoint_keeps_metadata_and_random_states(tmp_path: Path) -> None:
    from training.toy import make_policy

    trainer = PPOTrainer(make_policy(0), config=PPOConfig())
    random.seed(5)
    torch.manual_seed(5)
    state = capture_rng_state()
    expected = (random.random(), torch.rand(3))
    save_checkpoint(tmp_path / "new", trainer, 3, metadata={"data_position": 48}, rng_state=state)
    assert checkpoint_metadata(tmp_path / "new") == {"step": 3, "data_position": 48}
    random.seed(0)
    torch.manual_seed(0)
    restore_rng_state(checkpoint_rng_state(tmp_path / "new") or {})
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])

    save_checkpoint(tmp_path / "old", trainer, 1)  # as written before metadata existed
    assert checkpoint_metadata(tmp_path / "old") == {} and checkpoint_rng_state(tmp_path / "old") is None
    assert load_checkpoint(tmp_path / "old", trainer) == 1
    with pytest.raises(UsageError, match="not a PPO checkpoint"):
        checkpoint_metadata(tmp_path)


# -- the rollout engine choice ---------------------------------------------------------------------


def _sglang_config(tmp_path: Path, **changes: Any) -> TrainConfig:
    return TrainConfig(model="m", out=str(tmp_path), pool="p", rollout="sglang", **changes)


def test_sglang_rollout_without_its_module_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "training.sglang_rollout", None)  # as if the file were missing
    tokenizer = types.SimpleNamespace(eos_token_id=2, pad_token_id=0)
    with pytest.raises(UsageError, match=r"needs training/sglang_rollout\.py.*--rollout hf"):
        make_rollout(_sglang_config(tmp_path), None, tokenizer, out=tmp_path, bf16=False)


def test_sglang_rollout_is_built_lazily_on_an_attached_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[Any, dict[str, Any]]] = []

    class FakeSGLangRollout:
        def __init__(self, backend: Any, **kwargs: Any) -> None:
            made.append((backend, kwargs))

    module = types.ModuleType("training.sglang_rollout")
    module.SGLangRollout = FakeSGLangRollout  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.sglang_rollout", module)
    tokenizer = types.SimpleNamespace(eos_token_id=2, pad_token_id=0)
    config = _sglang_config(tmp_path, sglang_url="http://127.0.0.1:30000", sglang_weights_dir="/dev/shm/w")
    engine = make_rollout(config, None, tokenizer, out=tmp_path, bf16=True)
    assert isinstance(engine, FakeSGLangRollout)
    backend, kwargs = made[0]
    assert backend.base_url == "http://127.0.0.1:30000"
    assert kwargs == {
        "weights_dir": "/dev/shm/w",
        "stop_token_ids": [2],
        "temperature": 1.0,
        "save_dtype": torch.bfloat16,
    }


# -- whole runs ------------------------------------------------------------------------------------


def _steps(path: Path) -> list[int]:
    return [int(r["step"]) for r in read_jsonl(path)]


def test_tiny_run_end_to_end(full_run: Path) -> None:
    metrics = read_jsonl(full_run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    for record in metrics:
        for key in METRIC_KEYS:
            assert key in record, key
        assert 0.0 <= record["charts/reward_mean"] <= 1.0
        assert record["charts/response_length"] > 0
    assert [m["data_position"] for m in metrics] == [2 * (s + 1) for s in range(STEPS)]
    episodes = read_jsonl(full_run / "episodes.jsonl")
    assert [len(e["episodes"]) for e in episodes] == [4] * STEPS  # 2 problems x 2 responses
    for record in episodes:
        assert all(2 <= len(indices) <= 4 for _, indices in record["episodes"])
        ids = [pid for pid, _ in record["episodes"]]
        assert ids[0] == ids[1] and ids[2] == ids[3]  # each problem's responses side by side
    assert (full_run / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # checkpoints every 2 steps and at the end, the newest 2 kept
    names = sorted(p.name for p in (full_run / "checkpoints").iterdir())
    assert names == ["step-000004", "step-000005"]
    assert latest_checkpoint(full_run) == full_run / "checkpoints" / "step-000005"
    metadata = checkpoint_metadata(full_run / "checkpoints" / "step-000004")
    assert metadata["step"] == 4 and metadata["data_position"] == 8
    assert metadata["fingerprint"]["seed"] == 0 and metadata["fingerprint"]["problems"] == 3
    assert checkpoint_rng_state(full_run / "checkpoints" / "step-000004") is not None
    assert (full_run / "model" / "config.json").is_file()


def test_crash_then_resume_consumes_the_same_episodes(
    workspace: dict[str, Path], full_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "crashy"
    crashed = _run(workspace, out, env={KILL_AT_STEP_ENV: "3"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    # steps 0-2 ran and were logged; the newest checkpoint is after step index 1 (2 steps done)
    assert _steps(out / "metrics.jsonl") == [0, 1, 2]
    assert latest_checkpoint(out) == out / "checkpoints" / "step-000002"

    resumed = _run(workspace, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    # no step repeated or skipped, and exactly the uninterrupted run's episodes
    assert _steps(out / "metrics.jsonl") == list(range(STEPS))
    assert read_jsonl(out / "episodes.jsonl") == read_jsonl(full_run / "episodes.jsonl")
    # with the same seeds, weights, optimizers and RNG states the updates are the same too (CPU, 1 thread)
    for key in ("charts/reward_mean", "charts/response_length", "losses/policy_loss", "losses/value_loss"):
        got = [m[key] for m in read_jsonl(out / "metrics.jsonl")]
        want = [m[key] for m in read_jsonl(full_run / "metrics.jsonl")]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), key
    from safetensors.torch import load_file

    final = "checkpoints/step-000005/actor.safetensors"
    resumed_weights, uninterrupted = load_file(out / final), load_file(full_run / final)
    assert resumed_weights.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed_weights[k], uninterrupted[k]) for k in resumed_weights)


def test_checkpoint_from_another_config_is_refused(
    workspace: dict[str, Path], full_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(full_run, out)
    refused = _run(workspace, out, "--seed", "1", "--problems-per-step", "3", "--steps", "7")
    assert refused.returncode == 2
    assert "step-000005 was written by a different configuration" in refused.stderr
    assert "seed: 0 in the checkpoint, 1 now" in refused.stderr
    assert "problems_per_step: 2 in the checkpoint, 3 now" in refused.stderr
    assert "--force-resume" in refused.stderr
    assert _steps(out / "metrics.jsonl") == list(range(STEPS))  # nothing touched
    no = _run(workspace, out, "--resume", "no")
    assert no.returncode == 2 and "already holds a checkpoint" in no.stderr


def test_resume_yes_needs_a_checkpoint(tmp_path: Path) -> None:
    pool = write_pool_entries(tmp_path / "pool.jsonl", _pool_entries())
    config = TrainConfig(model="m", out=str(tmp_path / "run"), pool=str(pool), resume="yes", min_messages=2)
    with pytest.raises(UsageError, match="holds no checkpoint to resume from"):
        train(config)  # refused before any model is loaded
    with pytest.raises(UsageError, match="at least --min-messages 16"):
        train(dataclasses.replace(config, min_messages=16, max_messages=24))


def test_fingerprint_error_names_the_checkpoint() -> None:
    error = FingerprintError(Path("run/checkpoints/step-000002"), ["seed: 0 in the checkpoint, 1 now"])
    assert isinstance(error, UsageError) and error.differences == ["seed: 0 in the checkpoint, 1 now"]
    assert "step-000002" in str(error) and "--force-resume" in str(error)


def test_pool_built_with_the_simulated_backend(workspace: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "built"
    done = _train(
        "--model",
        str(workspace["model"]),
        "--out",
        str(out),
        "--arithmetic",
        "3",
        "--build-pool",
        "sim",
        "--pool-size",
        "4",
        "--min-messages",
        "2",
        "--max-messages",
        "4",
        "--steps",
        "1",
        "--problems-per-step",
        "2",
        "--responses-per-problem",
        "1",
        "--shared-message-set",
        "--max-response-tokens",
        "8",
        "--no-export-model",
        "--stage",
        "none",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SIMULATED" in done.stderr
    assert (out / "pool" / "pool.jsonl").is_file()
    assert _steps(out / "metrics.jsonl") == [0]
    assert not (out / "model").exists()
    (record,) = read_jsonl(out / "episodes.jsonl")
    assert len(record["episodes"]) == 2 and all(pid.startswith("arith-0-") for pid, _ in record["episodes"])


# -- the curriculum inside the driver --------------------------------------------------------------


def _curriculum_entries() -> list[PoolEntry]:
    """Eight problems whose answer is 7, with 0 to 3 right messages of 4: stage 1 keeps the 1-of-4 ones."""
    return sevens([1, 1, 1, 1, 0, 2, 3, 1])


@pytest.fixture(scope="module")
def curriculum(workspace: dict[str, Path]) -> dict[str, Path]:
    """A tiny model taught the synthesizer's answer shape, so stage 2 sees accuracies between 0 and 1."""
    from training.tiny_synth import teach_synthesis_shape

    root = workspace["root"]
    model = root / "tiny-synth"
    shutil.copytree(workspace["model"], model)
    entries = _curriculum_entries()
    teach_synthesis_shape(model, entries, lo=2, hi=4, steps=40)
    pool = write_pool_entries(root / "curriculum-pool.jsonl", entries)
    return {"root": root, "model": model, "pool": pool}


def _run_curriculum(
    setup: dict[str, Path], out: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    options = ["--steps", "2", "--save-every", "1", "--keep-checkpoints", "9", "--max-response-tokens", "24"]
    return _train(
        *_tiny_options(setup, out),
        *options,
        "--stage2-samples",
        "8",
        "--no-export-model",
        env=env,
        timeout=400,
    )


def test_curriculum_runs_both_stages_and_resumes_across_the_boundary(
    curriculum: dict[str, Path], tmp_path: Path
) -> None:
    from training.curriculum import stage1_filter

    full = tmp_path / "full"
    done = _run_curriculum(curriculum, full)
    assert done.returncode == 0, done.stderr[-3000:]
    # stage 1: the 1-of-4 problems are kept, the rest dropped with their reasons, and the counts logged
    stage1 = stage1_filter(_curriculum_entries())
    assert [e.problem_id for e in stage1.kept] == ["seven-0", "seven-1", "seven-2", "seven-3", "seven-7"]
    assert (
        "stage 1: 5 of 8 problems kept (dropped: all_messages_wrong 1, too_easy 2); thresholds: "
        "0 < mean message accuracy < 0.375 (math), < 0.625 (code)" in done.stdout
    )
    assert "stage 1: 5 problems, steps 0 -> 2" in done.stdout
    # stage 2: the stage-1 policy's synthesis accuracy, 8 samples per problem; kept when in (0, 1)
    summary = json.loads((full / "curriculum" / "stage2.summary.json").read_text())
    assert summary["total"] == 5 and summary["settings"]["samples"] == 8
    for decision in summary["decisions"]:
        assert len(decision["scores"]) == 8
        assert decision["kept"] == (0 < decision["accuracy"] < 1)
    kept2 = sorted(d["problem_id"] for d in summary["decisions"] if d["kept"])
    assert kept2, summary["decisions"]
    assert "stage 2: synthesis accuracy of the stage-1 policy on 5 problems x 8 samples" in done.stdout
    assert f"stage 2: {len(kept2)} of 5 problems kept" in done.stdout
    assert f"stage 2: {len(kept2)} problems, steps 2 -> 4" in done.stdout
    metrics = read_jsonl(full / "metrics.jsonl")
    assert [(m["step"], m["stage"]) for m in metrics] == [(0, "1"), (1, "1"), (2, "2"), (3, "2")]
    episodes = read_jsonl(full / "episodes.jsonl")
    assert {pid for r in episodes[:2] for pid, _ in r["episodes"]} <= {e.problem_id for e in stage1.kept}
    assert {pid for r in episodes[2:] for pid, _ in r["episodes"]} <= set(kept2)
    boundary = checkpoint_metadata(full / "checkpoints" / "step-000002")
    assert boundary["stages_done"] == ["1"] and boundary["stage"] == "1"

    # killed at the first step of stage 2, then resumed: with the stage-2 set written before the crash it
    # is read back; without it (killed during the evaluation) it is evaluated again from the boundary
    # checkpoint. Either way the run ends with the uninterrupted run's episodes and updates.
    for keep_stage2_set in (True, False):
        out = tmp_path / f"crash-{keep_stage2_set}"
        crashed = _run_curriculum(curriculum, out, env={KILL_AT_STEP_ENV: "2"})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
        assert _steps(out / "metrics.jsonl") == [0, 1]
        if not keep_stage2_set:
            for path in (out / "curriculum").glob("stage2.*"):
                path.unlink()
        resumed = _run_curriculum(curriculum, out)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resuming from" in resumed.stdout and "step-000002" in resumed.stdout
        assert "stage 1: 5 problems" not in resumed.stdout  # stage 1 is not trained again
        assert ("read from" in resumed.stdout) == keep_stage2_set
        assert read_jsonl(out / "episodes.jsonl") == episodes
        for key in ("charts/reward_mean", "losses/policy_loss", "losses/value_loss"):
            got = [m[key] for m in read_jsonl(out / "metrics.jsonl")]
            assert got == pytest.approx([m[key] for m in metrics], rel=1e-5, abs=1e-7), key
