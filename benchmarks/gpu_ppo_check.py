"""A prepared GPU check: a few PPO steps of a random-init Qwen3-0.6B-shaped model, rollouts by HFRollout.

Nothing is downloaded: the model is built from a `Qwen3Config` with Qwen3-0.6B's sizes (151,936-token
vocabulary, 28 layers, hidden size 1024, tied embeddings) and random weights, and the prompts are random
token ids. Responses run to ``--max-new-tokens`` (no end-of-sequence token), so every step does the
same work. Rewards are synthetic (1 when a response's first token id is even): the point is the
throughput and memory of a full PPO step on this model size, not learning.

On CUDA the trainer keeps fp32 weights and runs its forward passes under bf16 autocast with gradient
checkpointing on; the rollout engine holds its own bf16 copy of the actor (as SGLang would), refreshed
by ``sync_weights`` after every update. On CPU the engine shares the actor's fp32 weights.

Run from the repository root::

    python -m benchmarks.gpu_ppo_check                          # CUDA when available, 0.6B sizes
    python -m benchmarks.gpu_ppo_check --device cpu --tiny      # seconds on a CPU: the tests' smoke run

Prints the settings, one line per step (steps before ``--warmup`` are not timed), then exactly one
summary line::

    tokens_per_s=1234.5 peak_mem_gib=21.37 steps=3 device=cuda

``tokens_per_s`` is response tokens generated per second of whole PPO steps (rollout, update and weight
sync) over the timed steps; ``peak_mem_gib`` is ``torch.cuda.max_memory_allocated`` on CUDA and the
process's peak resident set size on CPU. The exit status is 1 when a metric is not finite (except
explained variance, which is nan by definition when the returns do not vary, as with all-zero rewards).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from benchmarks import _args
from training.ppo import PPOConfig, PPOTrainer
from training.rollout import HFRollout, Sample


@dataclass(frozen=True, slots=True)
class Sizes:
    """Model and batch sizes of a run; the model's under the names `Qwen3Config` gives them."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    problems: int
    responses: int
    prompt_len: int
    max_new_tokens: int

    def model_sizes(self) -> dict[str, Any]:
        """The model's sizes, as `Qwen3Config` keywords."""
        batch = ("problems", "responses", "prompt_len", "max_new_tokens")
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in batch}


QWEN3_0_6B = Sizes(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    problems=8,
    responses=8,
    prompt_len=512,
    max_new_tokens=256,
)
"""Qwen3-0.6B's architecture, with a batch of 8 problems x 8 responses of 512 + 256 tokens."""

TINY = Sizes(
    vocab_size=256,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    problems=2,
    responses=2,
    prompt_len=8,
    max_new_tokens=4,
)
"""A model and batch small enough for a CPU smoke run in seconds."""


_MAY_BE_NAN = frozenset({"charts/explained_variance"})
"""Metrics that are nan by definition in some steps (see `training.ppo.explained_variance`)."""


def qwen3_config(sizes: Sizes, *, tied: bool = True) -> Qwen3Config:
    """The Qwen3 config of the model part of ``sizes`` (``tied``: the LM head shares the embeddings)."""
    rope: dict[str, Any] = {"rope_theta": 1_000_000.0}  # Qwen3's; a keyword both transformers 4 and 5 take
    return Qwen3Config(
        **sizes.model_sizes(),
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        **rope,
    )


def build_model(sizes: Sizes, device: torch.device, seed: int) -> Qwen3ForCausalLM:
    """A random-init Qwen3 causal LM of ``sizes``, built directly on ``device`` in fp32."""
    config = qwen3_config(sizes)
    torch.manual_seed(seed)
    with device:
        return Qwen3ForCausalLM(config)


def peak_memory_gib(device: torch.device) -> float:
    """Peak CUDA memory allocated by torch, or the process's peak resident set size on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak_kib / 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _args.parser(__doc__)
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda, cuda:N or cpu"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model and batch (CPU smoke run)")
    parser.add_argument("--steps", type=int, default=3, help="timed PPO steps")
    parser.add_argument("--warmup", type=int, default=1, help="PPO steps run first and not timed")
    parser.add_argument("--layers", type=int, help="decoder layers (default: 28; tiny: 2)")
    parser.add_argument("--problems", type=int, help="prompts per step (default: 8; tiny: 2)")
    parser.add_argument("--responses", type=int, help="responses per prompt (default: 8; tiny: 2)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens (default: 512; tiny: 8)")
    parser.add_argument("--max-new-tokens", type=int, help="response tokens (default: 256; tiny: 4)")
    parser.add_argument(
        "--micro-batch-tokens", type=int, default=16384, help="PPOConfig.max_tokens_per_micro_batch"
    )
    parser.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    parser.add_argument("--tis-cap", type=float, help="PPOConfig.tis_cap (truncated importance sampling)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2
    base = TINY if args.tiny else QWEN3_0_6B
    sizes = dataclasses.replace(
        base,
        num_hidden_layers=args.layers or base.num_hidden_layers,
        problems=args.problems or base.problems,
        responses=args.responses or base.responses,
        prompt_len=args.prompt_len or base.prompt_len,
        max_new_tokens=args.max_new_tokens or base.max_new_tokens,
    )
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
        print(
            f"device={device} name={torch.cuda.get_device_name(device)} torch={torch.__version__}", flush=True
        )
    else:
        print(f"device=cpu threads={torch.get_num_threads()} torch={torch.__version__}", flush=True)

    started = time.perf_counter()
    actor = build_model(sizes, device, args.seed)
    params = sum(p.numel() for p in actor.parameters())
    config = PPOConfig(
        problems_per_step=sizes.problems,
        responses_per_problem=sizes.responses,
        max_tokens_per_micro_batch=args.micro_batch_tokens,
        gradient_checkpointing=not args.no_checkpointing,
        bf16="auto",
        tis_cap=args.tis_cap,
        seed=args.seed,
    )
    trainer = PPOTrainer(actor, config=config)
    # On CUDA the engine holds its own bf16 weights, as an inference server would; on CPU it shares the
    # actor's (bf16 matmuls are slow there).
    engine_model: Any = actor
    if on_cuda:
        engine_model = copy.deepcopy(engine_model).to(torch.bfloat16)
    engine = HFRollout(engine_model, pad_token_id=0, eos_token_id=None, temperature=config.temperature)
    print(
        f"model=qwen3{'-tiny' if args.tiny else '-0.6b'} layers={sizes.num_hidden_layers} params={params:,} "
        f"problems={sizes.problems} responses={sizes.responses} prompt_len={sizes.prompt_len} "
        f"max_new_tokens={sizes.max_new_tokens} gradient_checkpointing={config.gradient_checkpointing} "
        f"bf16={trainer.use_bf16} engine_dtype={next(engine_model.parameters()).dtype} "
        f"setup_s={time.perf_counter() - started:.1f}",
        flush=True,
    )

    prompt_gen = torch.Generator().manual_seed(args.seed)
    timed_tokens, timed_seconds, finite = 0, 0.0, True
    for step in range(args.warmup + args.steps):
        prompts = torch.randint(
            0, sizes.vocab_size, (sizes.problems, sizes.prompt_len), generator=prompt_gen
        ).tolist()  # (P, L) random prompt token ids
        step_start = time.perf_counter()
        samples: list[Sample] = engine.generate(
            prompts, n=sizes.responses, max_new_tokens=sizes.max_new_tokens
        )
        _synchronize(device)
        rollout_s = time.perf_counter() - step_start
        rewards = [float(s.response_ids[0] % 2 == 0) for s in samples]
        update_start = time.perf_counter()
        metrics = trainer.step(samples, rewards)
        engine.sync_weights(trainer.actor)
        _synchronize(device)
        update_s = time.perf_counter() - update_start
        step_s = time.perf_counter() - step_start

        response_tokens = sum(len(s.response_ids) for s in samples)
        train_tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        timed = step >= args.warmup
        if timed:
            timed_tokens += response_tokens
            timed_seconds += step_s
        finite = finite and all(math.isfinite(v) for k, v in metrics.items() if k not in _MAY_BE_NAN)
        print(
            f"step={step} {'timed' if timed else 'warmup'} step_s={step_s:.2f} "
            f"rollout_tok_per_s={response_tokens / rollout_s:.1f} "
            f"train_tok_per_s={train_tokens / update_s:.1f} "
            f"policy_loss={metrics['losses/policy_loss']:+.4f} value_loss={metrics['losses/value_loss']:.4f} "
            f"rollout_logprob_diff={metrics['charts/rollout_logprob_diff']:.4f} "
            f"approx_kl={metrics['charts/approx_kl']:.5f} peak_mem_gib={peak_memory_gib(device):.2f}",
            flush=True,
        )

    if not finite:
        print("a metric was not finite (NaN or inf): see the step lines above", file=sys.stderr)
    print(
        f"tokens_per_s={timed_tokens / timed_seconds:.1f} peak_mem_gib={peak_memory_gib(device):.2f} "
        f"steps={args.steps} device={device.type}",
        flush=True,
    )
    return 0 if finite else 1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
