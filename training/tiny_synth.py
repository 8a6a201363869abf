"""A tiny synthesizer for offline tests and benchmarks of the real training path.

`pacore_agent.testing.tiny_model.build_tiny_model` answers ``What is a+b?`` chats, but a synthesis prompt
P(x, M) is long and unlike anything it saw, so it babbles and every reward is 0: PPO has nothing to learn
from. `teach_synthesis_shape` fine-tunes it for a few dozen supervised steps on the episodes of a pool
(P(x, M) rendered with its chat template, exactly as the trainer renders them) with a target in the shape
a synthesizer answers::

    <think>
    Reference 2
    </think>

    \\boxed{17}

where the boxed answer is copied from ONE reference chosen at random, right or wrong. The result answers
in that shape with a multi-token response, and its reward is about the share of right messages in M: a
policy that PPO can improve by copying better (the benchmark ``benchmarks/ppo_chat.py`` and the
curriculum test in ``tests/test_train_driver.py``). Everything is seeded and needs no network.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pacore_agent.evaluation.answers import extract_answer
from pacore_agent.evaluation.store import PoolEntry
from training.env import EnvConfig, SynthesisEnv, apply_chat_template

__all__ = ["copy_target", "teach_synthesis_shape"]


def copy_target(references: Sequence[str], rng: random.Random) -> str:
    """The supervised target: a thought naming one reference, then that reference's boxed answer."""
    index = rng.randrange(len(references))
    answer = extract_answer(references[index]) or ""
    return f"<think>\nReference {index + 1}\n</think>\n\n\\boxed{{{answer}}}"


def teach_synthesis_shape(
    folder: str | Path,
    entries: Sequence[PoolEntry],
    *,
    lo: int,
    hi: int,
    steps: int = 60,
    batch_size: int = 8,
    lr: float = 1e-2,
    seed: int = 0,
) -> Path:
    """Fine-tune the model in ``folder`` (in place) to answer synthesis prompts by copying a reference.

    Args:
        folder: A transformers causal LM with a chat template (e.g. from ``build_tiny_model``).
        entries: Pools whose episodes are the training prompts.
        lo: Fewest messages per episode, as the trainer will draw them.
        hi: Most messages per episode.
        steps: Optimizer steps (AdamW).
        batch_size: Episodes per step.
        lr: Learning rate.
        seed: Seeds the episodes, the targets and the batches.

    Returns:
        ``folder``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    env = SynthesisEnv(entries, EnvConfig(lo=lo, hi=hi, seed=seed + 7919))  # draws unlike training's
    rng = random.Random(seed)
    eos = tokenizer.eos_token
    rows: list[tuple[list[int], list[int]]] = []
    for index in range(steps * batch_size):
        episode = env.episode(index % len(env), step=-1, index=index)
        prompt = apply_chat_template(tokenizer, episode.prompt, tokenize=True)
        target = tokenizer(copy_target(episode.references, rng) + eos, add_special_tokens=False)["input_ids"]
        rows.append((prompt, list(target)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        model.train()
        pad = tokenizer.pad_token_id
        for step in range(steps):
            batch = rows[step * batch_size : (step + 1) * batch_size]
            width = max(len(p) + len(t) for p, t in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (N, T)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)  # loss on the target only
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (prompt, target) in enumerate(batch):
                row = prompt + target
                ids[i, : len(row)] = torch.tensor(row)
                labels[i, len(prompt) : len(row)] = torch.tensor(target)
                mask[i, : len(row)] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        model.save_pretrained(folder)
    return folder
