"""Train a PaCoRe synthesizer with PPO on one node, top to bottom.

::

    python -m training.train --model Qwen/Qwen3-4B --pool runs/pool --out runs/ppo
    python -m training.train --model ./tiny --problems train.jsonl --build-pool sim --out runs/try
    python -m training.train --help

Every option is a field of `TrainConfig`; the defaults are the paper's (DESIGN.md, "Training"): strict
on-policy PPO with GAE gamma = lambda = 1, actor lr 2e-6, critic lr 5e-6, 16 problems x 64 responses per
step, no KL, no entropy bonus, |M| ~ U(16, 24) messages per episode, temperature 1.0.

The curriculum (``--stage all``, the default), in one run:

1. The pool: ``--pool`` read, or built from ``--problems``/``--arithmetic`` into ``OUT/pool``.
2. Stage 1 (`training.curriculum.stage1_filter`): keep the problems whose mean message accuracy is in
   (0, ``--math-threshold``) or (0, ``--code-threshold``); written to ``OUT/curriculum/stage1.jsonl``.
3. Train ``--steps`` PPO steps on them (default: one pass).
4. Stage 2: the synthesis accuracy of the policy as it is now (the stage-1 checkpoint), ``--stage2-samples``
   samples per stage-1 problem, each on its own message set, through the trainer's own rollout engine;
   keep the problems it solves sometimes but not always (`training.curriculum.stage2_result`); written
   to ``OUT/curriculum/stage2.jsonl``.
5. Train on: ``--stage2-steps`` more steps (default: --steps, else one pass) on the stage-2 set.

Each stage logs its thresholds, its kept and dropped counts per reason, and its steps (stdout, the
``.summary.json`` beside each set, and ``"stage"`` in every metrics line). ``--stage 1`` stops after
step 3; ``--stage 2`` runs steps 4-5 with ``--model`` as the stage-1 policy; ``--stage none`` trains on
the pool as given (a set the ``training.verl`` scripts filtered). The filters also run alone:
``python -m training.curriculum stage1`` and ``python -m training.verl.stage2_filter``.

One step:

1. Data: the next ``problems_per_step`` problems of a seeded order. Position p of the data stream is
   problem ``epoch_order(N, seed, p // N)[p % N]``: every epoch is a fresh permutation of all N problems,
   and step s reads positions [s * B, (s + 1) * B).
2. Episodes: ``problems_per_step x responses_per_problem`` of them; the ``responses_per_problem``
   responses of a problem share one message set, as in the verl launch
   (`training.env.SynthesisEnv.episode`, seeded by (seed, step, index)); ``--no-shared-message-set``
   draws one per response instead.
3. Rollout: P(x, M) rendered with the model's chat template and tokenized, then sampled by the rollout
   engine (`HFRollout` in-process, or `SGLangRollout` from ``training.sglang_rollout``), the sampler
   seeded by (seed, step).
4. Rewards: each response decoded and scored with the environment's reward (binary math grade of
   C(trajectory), or the pass rate of the code tests), with the flags all-messages-wrong, emergent
   (right although every message was wrong) and cross-check (the response cites its references).
5. PPO: `PPOTrainer.step`, then the actor's new weights are pushed to the rollout engine.
6. Logs: one line per step in ``metrics.jsonl`` (``losses/*``, ``charts/*``, ``time/*``, and the
   synthesis behaviour ``synthesis/*`` of `training.diagnostics`) and in
   ``episodes.jsonl`` (the (problem id, message indices) of every episode).
7. Checkpoints: every ``--save-every`` steps and at the end, atomically, with the reward curve redrawn.

The run directory::

    OUT/
      run.json            the configuration and fingerprint of the latest start
      metrics.jsonl       one JSON line per step
      episodes.jsonl      one JSON line per step: the episodes it consumed
      reward_curve.png    charts/reward_mean per step; below, cross-check markers, emergent, shortcut
      checkpoints/step-000050/   actor, critic, optimizers, RNG states, data position, fingerprint
      pool/               the message pool, when built with --build-pool
      curriculum/         stage1.jsonl, stage2.jsonl and their .summary.json
      model/              the final actor and tokenizer (save_pretrained), when --export-model

Resume: a run directory that holds a checkpoint is resumed from its latest one (``--resume auto``, the
default): weights, optimizers, random states and the data position come back, the log lines of steps
after the checkpoint are dropped (those steps run again, drawing the same episodes), so the finished
logs equal those of an uninterrupted run. The checkpoint at the end of a stage records it as done, so a
run killed after stage 1 goes on with stage 2: its set is read back from ``OUT/curriculum`` when it was
written, else evaluated again from that checkpoint. A checkpoint written under another model, pool,
seed, batch layout or curriculum is refused with the fields that differ (``--force-resume`` continues
anyway).

Testing hook: with ``PACORE_TRAIN_KILL_AT_STEP=k`` in the environment the process SIGKILLs itself at
the start of step k (0-based), to test crash recovery.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import hashlib
import importlib
import json
import math
import os
import random
import shlex
import signal
import sys
import time
import typing
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from pacore_agent.evaluation.grading import DEFAULT_TRUNCATION, Truncation
from pacore_agent.evaluation.store import PoolEntry
from pacore_agent.exceptions import PacoreError, UsageError
from training._cli import dataclass_parser
from training.checkpoint import (
    FINGERPRINT_FIELDS,
    FingerprintError,
    config_fingerprint,
    fingerprint_differences,
    latest_checkpoint,
    pool_digest,
    resume_point,
    resume_state,
    save_run_checkpoint,
)
from training.curriculum import (
    CODE_THRESHOLD,
    MATH_THRESHOLD,
    FilterResult,
    Stage1Config,
    Stage2Config,
    stage1_set,
    stage2_episodes,
    stage2_result,
    stage2_set,
)
from training.diagnostics import step_diagnostics
from training.env import (
    DEFAULT_HI,
    DEFAULT_LO,
    EnvConfig,
    Episode,
    RewardResult,
    SynthesisEnv,
    apply_chat_template,
)
from training.memory import (
    MemoryEstimate,
    Precision,
    check_fits,
    count_parameters,
    device_memory,
    estimate_memory,
)
from training.metrics import StepLog, jsonable, plot_reward_curve
from training.pool import DEFAULT_POOL_SIZE, load_or_build_pool
from training.ppo import PPOConfig, PPOTrainer
from training.rollout import HFRollout, RolloutEngine, Sample

__all__ = [
    "FINGERPRINT_FIELDS",
    "FingerprintError",
    "RunSummary",
    "TrainConfig",
    "build_parser",
    "config_fingerprint",
    "episode_metrics",
    "epoch_order",
    "fingerprint_differences",
    "latest_checkpoint",
    "load_or_build_pool",
    "main",
    "make_rollout",
    "parse_args",
    "pool_digest",
    "step_positions",
    "train",
]

Stage = Literal["1", "2", "none"]
"""A stage of the curriculum (``none``: the pool as given)."""

KILL_AT_STEP_ENV = "PACORE_TRAIN_KILL_AT_STEP"
"""Testing hook: SIGKILL the process at the start of this (0-based) step."""

# ----------------------------------------------------------------------------------------------------
# 1. Arguments


@dataclass(frozen=True)
class TrainConfig(PPOConfig):
    """Everything a training run depends on; every field is a command-line flag of the same name.

    The PPO settings (learning rates, GAE, clipping, batch layout, bf16, temperature) are `PPOConfig`'s
    fields, inherited with their paper defaults and documentation.
    """

    # -- the run
    model: str = ""
    """The policy to train: a Hugging Face hub name or a local folder (a causal LM with a chat template).
    The critic starts from the same weights, with a fresh scalar value head."""
    out: str = ""
    """The run directory (metrics, episodes, reward curve, checkpoints, pool, final model)."""
    stage: Literal["all", "1", "2", "none"] = "all"
    """The curriculum: all (stage-1 filter, train, stage-2 filter with the stage-1 policy, train on),
    1 (stage-1 filter and training), 2 (stage-2 filter with --model as the stage-1 policy, then
    training), none (train on the pool as given, e.g. a set the training.verl scripts filtered)."""
    steps: int | None = None
    """PPO steps of each stage (default: one pass over the stage's problems); the whole run with --stage
    none. Steps done before a resume count."""
    stage2_steps: int | None = None
    """PPO steps of stage 2 (default: --steps, else one pass over the stage-2 problems)."""
    save_every: int = 50
    """Write a checkpoint every this many steps (and always after the last step)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep on disk."""
    resume: Literal["auto", "yes", "no"] = "auto"
    """auto: resume from OUT's latest checkpoint when there is one; yes: require one; no: refuse to start
    in a directory that holds one."""
    force_resume: bool = False
    """Resume from a checkpoint even when it was written under another model, pool, seed or batch layout."""
    seed: int = 0
    """Seeds the data order, the message draws, the sampler, the value head and the mini-batches."""
    device: str = "auto"
    """Torch device of the actor and critic: auto (cuda when available, else cpu), cpu, cuda, cuda:1."""
    precision: Precision = "fp32"
    """How the actor and critic are held: fp32 (16 bytes per parameter with gradients and AdamW states),
    or bf16 (bf16 weights and gradients, fp32 AdamW moments, Kahan-compensated updates: 14 bytes); see
    training.memory."""
    memory_check: bool = True
    """Before loading, estimate the memory of the actor, critic, gradients and optimizer states, log it,
    and refuse a run that cannot fit the device (pointing at verl)."""
    export_model: bool = True
    """Save the final actor and tokenizer with save_pretrained to OUT/model at the end."""

    # -- the data
    pool: str | None = None
    """The message pool: a PoolStore directory or a JSONL of pool entries (training.pool,
    training.curriculum write them)."""
    problems: tuple[str, ...] = ()
    """Problem files to build a pool from (our JSONL or PaCoRe-Train-8k; repeatable), instead of --pool."""
    arithmetic: int = 0
    """Add this many synthetic large-integer arithmetic problems to those to build a pool from."""
    build_pool: Literal["cached", "sim", "transformers", "openai"] = "cached"
    """Where the pool's messages come from: cached (the problems' own cached responses), sim (the
    SIMULATED test double), transformers (the --model, in-process), openai (an endpoint, --pool-base-url).
    The pool is written to OUT/pool and resumed on reruns."""
    pool_size: int = DEFAULT_POOL_SIZE
    """Messages per problem in a built pool (the paper caches 24)."""
    pool_base_url: str | None = None
    """OpenAI-compatible endpoint of --build-pool openai (its key comes from $PACORE_API_KEY)."""
    pool_model: str | None = None
    """Model name on the --pool-base-url endpoint (default: its only model)."""
    pool_max_tokens: int | None = None
    """Cap on the tokens of each pool trajectory (default: --max-response-tokens)."""
    min_messages: int = DEFAULT_LO
    """Fewest messages per episode: |M| ~ U(min_messages, max_messages)."""
    max_messages: int = DEFAULT_HI
    """Most messages per episode."""
    shared_message_set: bool = True
    """Give the responses of a problem within a step one message set, as the verl launch does (verl
    repeats each drawn item for its n responses); --no-shared-message-set draws one per response."""
    math_threshold: float = MATH_THRESHOLD
    """Stage 1 keeps math problems whose mean message accuracy is in (0, this)."""
    code_threshold: float = CODE_THRESHOLD
    """Stage 1 keeps code problems whose mean message pass rate is in (0, this)."""
    stage2_samples: int = 8
    """Stage 2: synthesis samples per problem, each on its own message set, with the stage-1 policy;
    problems solved by some but not all are kept."""

    # -- rollouts and rewards
    rollout: Literal["hf", "sglang"] = "hf"
    """Rollout engine: hf (in-process transformers sampling) or sglang (training.sglang_rollout)."""
    max_response_tokens: int = 32768
    """Cap on the tokens of each response."""
    max_prompt_tokens: int = 32768
    """Longest P(x, M) allowed, in tokens; a longer prompt stops the run with the problem's id."""
    rollout_batch_size: int = 256
    """Rows (prompt x response) per generate call of the hf engine."""
    sglang_url: str | None = None
    """Attach to this running SGLang server (e.g. http://127.0.0.1:30000) instead of launching one with
    --model (either way its --api-key, if any, comes from $PACORE_SGLANG_API_KEY)."""
    sglang_port: int | None = None
    """Port of a launched SGLang server (default: a free one)."""
    sglang_args: str = ""
    """Extra arguments of a launched SGLang server, shell-quoted; on the trainer's GPU leave it room,
    e.g. "--mem-fraction-static 0.4"."""
    sglang_weights_dir: str | None = None
    """Folder the SGLang server can read where new weights are written each step (default: a temporary
    folder; use /dev/shm to keep the round trip in memory)."""
    reward_workers: int = 8
    """Threads scoring responses at once (math-verify, code sandbox)."""
    truncation: Truncation = DEFAULT_TRUNCATION
    """What a response that hit --max-response-tokens earns: zero (reward 0, counted in
    charts/truncated_frac), mask (left out of the loss, counted in charts/masked_frac) or grade (graded like
    any other; a \\boxed{} written mid-reasoning would then count)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise UsageError("give --model: a hub name such as Qwen/Qwen3-8B or a local folder")
        if not self.out:
            raise UsageError("give --out: the run directory")
        # The command line offers only a Literal field's values; a config built in code is held to them too.
        for name, hint in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
                choices = ", ".join(map(str, typing.get_args(hint)))
                raise UsageError(f"--{name.replace('_', '-')} must be one of {choices}, got {value!r}")
        building = bool(self.problems or self.arithmetic)
        if bool(self.pool) == building:
            raise UsageError("give either --pool (a built pool) or --problems/--arithmetic to build one")
        if self.arithmetic and self.build_pool == "cached":
            raise UsageError("synthetic arithmetic problems have no cached responses: add --build-pool")
        if self.build_pool == "openai" and not self.pool_base_url:
            raise UsageError("--build-pool openai needs --pool-base-url")
        positive = {
            "save_every": self.save_every,
            "keep_checkpoints": self.keep_checkpoints,
            "pool_size": self.pool_size,
            "max_response_tokens": self.max_response_tokens,
            "max_prompt_tokens": self.max_prompt_tokens,
            "rollout_batch_size": self.rollout_batch_size,
            "reward_workers": self.reward_workers,
        }
        for name, value in positive.items():
            if value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.steps is not None and self.steps < 0:
            raise UsageError(f"--steps must be >= 0, got {self.steps}")
        if self.stage2_steps is not None and self.stage2_steps < 0:
            raise UsageError(f"--stage2-steps must be >= 0, got {self.stage2_steps}")
        if self.stage2_samples < 1:
            raise UsageError(f"--stage2-samples must be at least 1, got {self.stage2_samples}")
        self.stage1_config()  # raises on a bad threshold
        if self.arithmetic < 0:
            raise UsageError(f"--arithmetic must be >= 0, got {self.arithmetic}")
        if self.pool_max_tokens is not None and self.pool_max_tokens <= 0:
            raise UsageError(f"--pool-max-tokens must be positive, got {self.pool_max_tokens}")
        if self.rollout != "sglang" and (self.sglang_url or self.sglang_port or self.sglang_args):
            raise UsageError("the --sglang-* options need --rollout sglang")
        self.env_config()  # raises on a bad message range
        super().__post_init__()  # raises on bad PPO settings

    def ppo_config(self) -> PPOConfig:
        """The PPO part of this config, as a plain `PPOConfig`."""
        return PPOConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PPOConfig)})

    def stage1_config(self) -> Stage1Config:
        """The stage-1 filter's thresholds."""
        try:
            return Stage1Config(math_threshold=self.math_threshold, code_threshold=self.code_threshold)
        except UsageError as error:
            raise UsageError(f"--math-threshold/--code-threshold: {error}") from error

    def stage2_config(self) -> Stage2Config:
        """The stage-2 evaluation's settings (message sets drawn as in training)."""
        return Stage2Config(samples=self.stage2_samples, env=self.env_config())

    def stages(self) -> list[Stage]:
        """The stages this run trains, in order."""
        return {"all": ["1", "2"], "1": ["1"], "2": ["2"], "none": ["none"]}[self.stage]  # type: ignore[return-value]

    def env_config(self) -> EnvConfig:
        """The environment's settings."""
        return EnvConfig(
            lo=self.min_messages, hi=self.max_messages, seed=self.seed, truncation=self.truncation
        )


# ----------------------------------------------------------------------------------------------------
# 2. The command line, generated from TrainConfig (one flag per field, its docstring as help)

_GROUPS = {
    "model": "run",
    "pool": "data",
    "rollout": "rollouts and rewards",
    "actor_lr": "PPO (paper defaults)",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m training.train`` parser: one flag per `TrainConfig` field, documented."""
    description = (__doc__ or "").split("\n\n")[0] + "\n\nDefaults are the PaCoRe paper's (see DESIGN.md)."
    return dataclass_parser(
        TrainConfig,
        prog="python -m training.train",
        description=description,
        groups=_GROUPS,
        required=("model", "out"),
    )


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse a command line into a `TrainConfig` (argparse exits with usage on bad input).

    Raises:
        UsageError: The options are inconsistent (the message says what to change).
    """
    namespace = vars(build_parser().parse_args(argv))
    namespace["problems"] = tuple(namespace["problems"] or ())
    return TrainConfig(**namespace)


# ----------------------------------------------------------------------------------------------------
# 3. Pure helpers: the data order, episode metrics


def _seed_of(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@functools.lru_cache(maxsize=4)
def epoch_order(num_problems: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The order of the problems in one epoch: a permutation of ``range(num_problems)``.

    It is seeded by (seed, epoch), so every epoch has its own order and any process can recompute it.
    """
    order = list(range(num_problems))
    random.Random(_seed_of("pacore-train-order", seed, epoch)).shuffle(order)
    return tuple(order)


def step_positions(data_position: int, count: int, num_problems: int, seed: int) -> list[int]:
    """The problems (positions in the sorted pool) at ``count`` consecutive places of the data stream.

    Place p of the stream is ``epoch_order(num_problems, seed, p // num_problems)[p % num_problems]``.
    """
    return [
        epoch_order(num_problems, seed, p // num_problems)[p % num_problems]
        for p in range(data_position, data_position + count)
    ]


def episode_metrics(results: Sequence[RewardResult]) -> dict[str, float]:
    """The environment's view of a step: accuracy, emergent correctness, cross-checking.

    ``charts/emergent_rate`` is the share of right answers among episodes whose messages were all
    wrong (NaN when there were none); ``charts/emergent_frac`` the share of all episodes.
    ``charts/truncated_frac`` counts the responses that hit the length limit, ``charts/masked_frac`` those
    left out of the loss (``--truncation mask``).
    """
    count = len(results)
    all_wrong = sum(r.all_messages_wrong for r in results)
    emergent = sum(r.emergent for r in results)
    return {
        "charts/accuracy": sum(r.correct for r in results) / count,
        "charts/all_messages_wrong_frac": all_wrong / count,
        "charts/emergent_rate": emergent / all_wrong if all_wrong else math.nan,
        "charts/emergent_frac": emergent / count,
        "charts/cross_check_rate": sum(r.cross_check for r in results) / count,
        "charts/cross_check_mentions": sum(r.cross_check_mentions for r in results) / count,
        "charts/truncated_frac": sum(r.truncated for r in results) / count,
        "charts/masked_frac": sum(r.masked for r in results) / count,
    }


# ----------------------------------------------------------------------------------------------------
# 4. Setup: the device, the rollout engine


def _device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def make_rollout(config: TrainConfig, actor: Any, tokenizer: Any, *, out: Path, bf16: bool) -> RolloutEngine:
    """The rollout engine ``--rollout`` names; ``sglang`` imports ``training.sglang_rollout`` lazily."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if config.rollout == "hf":
        return HFRollout(
            actor,
            pad_token_id=pad,
            eos_token_id=eos,
            temperature=config.temperature,
            batch_size=config.rollout_batch_size,
        )
    try:
        module = importlib.import_module("training.sglang_rollout")
    except ModuleNotFoundError as exc:
        if exc.name != "training.sglang_rollout":
            raise UsageError(f"--rollout sglang: training.sglang_rollout needs {exc.name!r}: {exc}") from exc
        raise UsageError(
            "--rollout sglang needs training/sglang_rollout.py (SGLangRollout), which this checkout does "
            "not have; use --rollout hf"
        ) from exc
    from pacore_agent.backends.sglang import SGLangBackend

    api_key = os.environ.get("PACORE_SGLANG_API_KEY")
    if config.sglang_url:
        backend = SGLangBackend.attach(config.sglang_url, api_key=api_key)
    else:
        backend = SGLangBackend.launch(
            config.model,
            port=config.sglang_port,
            api_key=api_key,
            extra_args=shlex.split(config.sglang_args),
            log_path=out / "sglang.log",
        )
    engine: RolloutEngine = module.SGLangRollout(
        backend,
        weights_dir=config.sglang_weights_dir,
        stop_token_ids=[eos] if eos is not None else [],
        temperature=config.temperature,
        save_dtype=torch.bfloat16 if bf16 else None,
    )
    return engine


# ----------------------------------------------------------------------------------------------------
# 5. The loop


@dataclass(frozen=True)
class RunSummary:
    """What a call of `train` did.

    Attributes:
        out: The run directory.
        steps_done: PPO steps done in the whole run.
        resumed_from: The checkpoint it resumed from, if any.
        last_metrics: The metrics line of the last step run by this call (None when it ran none).
    """

    out: Path
    steps_done: int
    resumed_from: Path | None
    last_metrics: dict[str, Any] | None


def _tokenize(tokenizer: Any, episode: Episode, limit: int) -> list[int]:
    ids: list[int] = apply_chat_template(tokenizer, episode.prompt, tokenize=True)
    if len(ids) > limit:
        raise UsageError(
            f"problem {episode.problem_id!r}: P(x, M) has {len(ids)} tokens at step {episode.step}, more than "
            f"--max-prompt-tokens {limit}; filter long pools out or raise the limit"
        )
    return ids


def _stage_steps(config: TrainConfig, stage: Stage, problems: int) -> int:
    """PPO steps of a stage: --stage2-steps, --steps, else one pass over its problems."""
    if stage == "2" and config.stage2_steps is not None:
        return config.stage2_steps
    if config.steps is not None:
        return config.steps
    return math.ceil(problems / config.problems_per_step)


def evaluate_stage2(
    config: TrainConfig,
    entries: Sequence[PoolEntry],
    engine: RolloutEngine,
    tokenizer: Any,
    scorers: concurrent.futures.Executor,
    *,
    steps_done: int,
) -> FilterResult:
    """Stage 2's synthesis accuracy of the policy the engine holds now, on each stage-1 problem.

    The message sets are the ones `training.curriculum.stage2_filter` draws (`stage2_episodes`), sampled by
    the trainer's own rollout engine through the chat template and scored with the training reward; the
    keep rule is `training.curriculum.stage2_result`'s.
    """
    settings = config.stage2_config()
    env = SynthesisEnv(entries, settings.env)
    episodes = [e for position in range(len(env)) for e in stage2_episodes(env, position, settings)]
    prompts = [_tokenize(tokenizer, e, config.max_prompt_tokens) for e in episodes]
    torch.manual_seed(_seed_of("pacore-train-stage2", config.seed, steps_done))
    samples = engine.generate(prompts, 1, config.max_response_tokens)
    texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    results = list(scorers.map(env.reward, episodes, texts, [s.finish_reason for s in samples]))
    outcomes: dict[int, tuple[list[float], list[str]]] = {p: ([], []) for p in range(len(env))}
    for index, result in enumerate(results):
        if not result.masked:  # --truncation mask: a cut-off sample says nothing about the policy's accuracy
            outcomes[index // settings.samples][0].append(result.score)
    return stage2_result(entries, outcomes, settings, model=f"{config.model} after {steps_done} steps")


def check_memory(config: TrainConfig, device: torch.device) -> MemoryEstimate:
    """Log what the actor and critic will take, estimated from the model's config alone.

    With --memory-check, a run that cannot fit ``device`` is refused before any weight is loaded.

    Raises:
        UsageError: It would not fit (the message names --precision bf16 where that fits, and verl).
    """
    from transformers import AutoConfig

    estimate = estimate_memory(
        *count_parameters(AutoConfig.from_pretrained(config.model)), config.precision, model=config.model
    )
    print(estimate.describe(), flush=True)
    if config.memory_check:
        check_fits(estimate, device_memory(device), where=str(device))
    return estimate


def train(config: TrainConfig) -> RunSummary:
    """Run (or resume) a training run: the curriculum's stages, each a loop of PPO steps.

    See the module docstring for what one step does and how stages follow each other.

    Raises:
        UsageError: Bad settings or data, or a checkpoint from another configuration (`FingerprintError`).
    """
    # Derived settings, computed once up front; a checkpoint from another run is refused before any
    # model is loaded.
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ppo = config.ppo_config()
    B, n = config.problems_per_step, config.responses_per_problem  # the paper's names
    device = _device(config)
    bf16 = config.uses_bf16(device)
    entries = load_or_build_pool(config, out)
    fingerprint = config_fingerprint(config, entries)
    checkpoint = resume_point(out, fingerprint, resume=config.resume, force_resume=config.force_resume)
    memory = check_memory(config, device)
    run_info = {
        "config": dataclasses.asdict(config),
        "fingerprint": fingerprint,
        "resumed_from": checkpoint,
        "memory": {"total": memory.total, **memory.parts},
    }
    (out / "run.json").write_text(
        json.dumps(jsonable(run_info), indent=2, default=str) + "\n", encoding="utf-8"
    )
    curriculum = out / "curriculum"
    staged = config.stage in ("all", "1", "2")
    stage1 = (
        stage1_set(entries, config.stage1_config(), curriculum / "stage1.jsonl") if staged else list(entries)
    )

    # The actor, its critic and optimizers, and the rollout engine.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    actor: Any = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
    actor.to(device)
    trainer = PPOTrainer(actor, config=ppo)
    steps_done, resumed = 0, dict[str, Any]()
    if checkpoint is not None:
        steps_done, resumed = resume_state(checkpoint, trainer)
    stages_done: list[str] = list(resumed.get("stages_done", []))
    metrics_log, episode_log = StepLog(out / "metrics.jsonl"), StepLog(out / "episodes.jsonl")
    metrics_log.truncate(steps_done)  # steps after the checkpoint run again
    episode_log.truncate(steps_done)
    print(
        f"pacore train: {len(entries)} problems, stages {', '.join(config.stages())}, {B} x {n} responses per "
        f"step, device {device}{' (bf16)' if bf16 else ''}, rollout {config.rollout}"
        + (f", resuming from {checkpoint}" if checkpoint else ""),
        flush=True,
    )
    kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "-1"))
    last: dict[str, Any] | None = None

    with ExitStack() as stack:
        engine = make_rollout(config, actor, tokenizer, out=out, bf16=bf16)
        if hasattr(engine, "close"):
            stack.callback(engine.close)
        # Weights known from step 0: an attached server holds whatever it was started with or last
        # given, and a resumed actor is not --model's, so the actor is pushed before the first rollout
        # (a refusal stops the run here; every later sample must carry the pushed weight version).
        if checkpoint is not None or config.sglang_url:
            engine.sync_weights(trainer.actor)
        scorers = stack.enter_context(concurrent.futures.ThreadPoolExecutor(config.reward_workers))

        for stage in config.stages():
            if stage in stages_done:
                continue

            # The stage's problems: the curriculum's filter (stage 2 evaluates the policy as it is now).
            if stage == "2":
                evaluate = functools.partial(
                    evaluate_stage2, config, stage1, engine, tokenizer, scorers, steps_done=steps_done
                )
                stage_entries = stage2_set(
                    stage1, curriculum / "stage2.jsonl", config.stage2_samples, evaluate
                )
                if not stage_entries:
                    print("stage 2: no problem left to train on; the run ends after stage 1", flush=True)
                    break
            else:
                stage_entries = stage1
            env = SynthesisEnv(stage_entries, config.env_config())
            if checkpoint is not None and resumed.get("stage", stage) == stage:  # resumed within it
                stage_start = int(resumed.get("stage_start", 0))
                data_position = int(resumed.get("data_position", (steps_done - stage_start) * B))
            else:
                stage_start, data_position = steps_done, 0
            stage_end = stage_start + _stage_steps(config, stage, len(env))
            print(f"stage {stage}: {len(env)} problems, steps {steps_done} -> {stage_end}", flush=True)

            for step in range(steps_done, stage_end):
                if step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                started = time.perf_counter()

                # 1. Data: the next B problems of the stage's seeded order.
                positions = step_positions(data_position, B, len(env), config.seed)

                # 2. Episodes: B x n, each its own message set (or one per problem, --shared-message-set).
                if config.shared_message_set:
                    drawn = [env.episode(p, step=step, index=i * n) for i, p in enumerate(positions)]
                    episodes = [e for e in drawn for _ in range(n)]
                else:
                    drawn = [
                        env.episode(p, step=step, index=i * n + j)
                        for i, p in enumerate(positions)
                        for j in range(n)
                    ]
                    episodes = drawn

                # 3. Rollout: P(x, M) through the chat template, sampled by the engine (seeded per step).
                prompts = [_tokenize(tokenizer, e, config.max_prompt_tokens) for e in drawn]
                torch.manual_seed(_seed_of("pacore-train-sample", config.seed, step))
                samples: list[Sample] = engine.generate(
                    prompts, n if config.shared_message_set else 1, config.max_response_tokens
                )
                rollout_done = time.perf_counter()

                # 4. Rewards: decode, then score C(response) (and the episode's flags); a response that hit
                #    the length limit earns what --truncation says.
                texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
                finish_reasons = [s.finish_reason for s in samples]
                results = list(scorers.map(env.reward, episodes, texts, finish_reasons))
                reward_done = time.perf_counter()

                # 5. PPO update on the responses in the loss (--truncation mask leaves truncated ones out),
                #    then the new weights to the rollout engine.
                in_loss = [i for i, r in enumerate(results) if not r.masked]
                if in_loss:
                    metrics = trainer.step([samples[i] for i in in_loss], [results[i].score for i in in_loss])
                else:  # every response was cut off and masked: nothing to learn from this batch
                    metrics = dict.fromkeys(
                        ("charts/reward_mean", "charts/approx_kl", "charts/clipfrac"), math.nan
                    )
                    metrics["charts/response_length"] = sum(len(s.response_ids) for s in samples) / len(
                        samples
                    )
                train_done = time.perf_counter()
                engine.sync_weights(trainer.actor)
                data_position += B
                steps_done = step + 1
                finished = time.perf_counter()

                # 6. Logs.
                response_tokens = sum(len(s.response_ids) for s in samples)
                record: dict[str, Any] = {
                    "step": step,
                    "stage": stage,
                    "data_position": data_position,
                    "epoch": data_position / len(env),  # epochs of the stage's set done, counting parts
                    **metrics,
                    **episode_metrics(results),
                    **step_diagnostics(episodes, texts, results),  # synthesis/*: as `pacore analyze` measures
                    "charts/prompt_length": sum(len(p) for p in prompts) / len(prompts),
                    "charts/tokens_per_s": response_tokens / (finished - started),
                    "time/rollout_s": rollout_done - started,
                    "time/reward_s": reward_done - rollout_done,
                    "time/train_s": train_done - reward_done,
                    "time/sync_s": finished - train_done,
                    "time/step_s": finished - started,
                }
                metrics_log.append(record)
                episode_log.append(
                    {"step": step, "episodes": [[e.problem_id, list(e.message_indices)] for e in episodes]}
                )
                last = record
                print(
                    f"step {step:5d}  stage {stage}  reward {record['charts/reward_mean']:.3f}  "
                    f"len {record['charts/response_length']:.0f}  kl {record['charts/approx_kl']:.2e}  "
                    f"clip {record['charts/clipfrac']:.3f}  {record['time/step_s']:.1f}s",
                    flush=True,
                )

                # 7. Checkpoint: every --save-every steps, and at the end of the stage (its boundary).
                if steps_done % config.save_every == 0 or steps_done == stage_end:
                    done = [*stages_done, stage] if steps_done == stage_end else stages_done
                    metadata = {
                        "stage": stage,
                        "stage_start": stage_start,
                        "stages_done": done,
                        "data_position": data_position,
                        "fingerprint": fingerprint,
                        "config": jsonable(dataclasses.asdict(config)),
                    }
                    save_run_checkpoint(
                        out, trainer, steps_done, metadata=metadata, keep=config.keep_checkpoints
                    )
                    plot_reward_curve(out / "metrics.jsonl", out / "reward_curve.png")
            stages_done.append(stage)

    plot_reward_curve(out / "metrics.jsonl", out / "reward_curve.png")
    if config.export_model:
        trainer.actor.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
    return RunSummary(out=out, steps_done=steps_done, resumed_from=checkpoint, last_metrics=last)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse, train; a usage error prints its message and exits with status 2."""
    try:
        config = parse_args(argv)
        summary = train(config)
    except PacoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, UsageError) else 1
    except (
        OSError
    ) as error:  # a --pool or --problems file that cannot be read, an --out that cannot be written
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"done: {summary.steps_done} steps in {summary.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
