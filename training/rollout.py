"""Rollout engines: sample responses, as token ids with their logprobs, for prompts given as token ids.

The PPO trainer sees an engine through two methods of `RolloutEngine`:

- ``generate(prompts, n, max_new_tokens)`` returns ``len(prompts) * n`` `Sample` objects, prompt-major
  (``samples[i * n + j]`` is the j-th response to ``prompts[i]``), each with the logprob the engine
  gave every sampled token;
- ``sync_weights(model)`` loads the actor's current weights into the engine before the next rollout.

An engine may hold resources (a server, an event-loop thread): ``close()`` releases them, and every
engine is a context manager that closes on exit (a no-op for in-process engines).

`HFRollout` samples in-process with a transformers model, for CPU runs and tests.
`training.sglang_rollout.SGLangRollout` implements the same methods on an SGLang server (its native
``/generate`` and weight-update endpoints).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import torch
from torch import nn

from pacore_agent.exceptions import UsageError

__all__ = ["FinishReason", "HFRollout", "RolloutEngine", "Sample"]

FinishReason = Literal["stop", "length"]
"""``stop``: the response ends with the end-of-sequence token; ``length``: it hit ``max_new_tokens``."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled response to one prompt, as the rollout engine produced it.

    Attributes:
        prompt_ids: The prompt's token ids.
        response_ids: The sampled token ids; includes the end-of-sequence token when the model emitted
            one (``finish_reason == "stop"``).
        logprobs: The engine's log-probability of each token of ``response_ids`` under the distribution
            it sampled from (same length as ``response_ids``).
        finish_reason: Why the response ended.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.response_ids):
            raise UsageError(
                f"a Sample needs one logprob per response token, got {len(self.logprobs)} logprobs "
                f"for {len(self.response_ids)} tokens"
            )


class RolloutEngine(ABC):
    """Samples responses for the trainer and receives the trainer's weights."""

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int) -> list[Sample]:
        """Sample ``n`` responses to each prompt.

        Args:
            prompts: Prompt token ids, one sequence per prompt.
            n: Responses per prompt.
            max_new_tokens: Cap on the tokens of each response.

        Returns:
            ``len(prompts) * n`` samples, prompt-major: ``samples[i * n + j]`` answers ``prompts[i]``.
        """

    @abstractmethod
    def sync_weights(self, model: nn.Module) -> None:
        """Load ``model``'s weights (the actor after its update) into the engine."""

    def close(self) -> None:  # noqa: B027 - a no-op default, not an abstract method
        """Release what the engine holds (a server, connections, threads). Idempotent; nothing here."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HFRollout(RolloutEngine):
    """In-process sampling with a transformers causal LM, for CPU runs and tests.

    The engine samples from ``softmax(logits / temperature)`` with no top-k or top-p truncation and
    reports the log-probability of each sampled token under that same distribution. Pass the actor
    itself as ``model`` to share its weights (then `sync_weights` has nothing to do), or a separate
    copy to mimic a real engine that holds its own weights.

    Args:
        model: A transformers causal LM.
        pad_token_id: Pads prompts on the left within a generation batch.
        eos_token_id: Ends a response; ``None`` lets every response run to ``max_new_tokens``.
        temperature: Sampling temperature (the paper samples at 1.0).
        batch_size: Rows (prompt x sample) per ``generate`` call.
    """

    def __init__(
        self,
        model: Any,
        *,
        pad_token_id: int,
        eos_token_id: int | None,
        temperature: float = 1.0,
        batch_size: int = 256,
    ) -> None:
        if temperature <= 0:
            raise UsageError(f"HFRollout samples, so temperature must be positive, got {temperature}")
        if batch_size <= 0:
            raise UsageError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.temperature = temperature
        self.batch_size = batch_size

    def sync_weights(self, model: nn.Module) -> None:
        """Copy ``model``'s weights into the engine's model (nothing to do when they are one object)."""
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int) -> list[Sample]:
        """Sample ``n`` responses to each prompt; see `RolloutEngine.generate`."""
        if n <= 0 or max_new_tokens <= 0:
            raise UsageError(f"n and max_new_tokens must be positive, got n={n}, {max_new_tokens=}")
        if any(len(p) == 0 for p in prompts):
            raise UsageError("every prompt needs at least one token")
        rows = [list(p) for p in prompts for _ in range(n)]
        was_training = self.model.training
        self.model.eval()
        try:
            samples: list[Sample] = []
            for start in range(0, len(rows), self.batch_size):
                samples += self._generate_rows(rows[start : start + self.batch_size], max_new_tokens)
        finally:
            self.model.train(was_training)
        return samples

    def _generate_rows(self, rows: list[list[int]], max_new_tokens: int) -> list[Sample]:
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        input_ids = torch.tensor(
            [[self.pad_token_id] * (width - len(r)) + r for r in rows], device=device
        )  # (B, P), left-padded so every row's next token comes at the same column
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=self.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new_ids = out.sequences[:, width:]  # (B, N)
        logits = torch.stack(out.logits, dim=1).float() / self.temperature  # (B, N, V), before sampling
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_ids.unsqueeze(-1)).squeeze(-1)  # (B, N)

        samples = []
        for row, ids, lps in zip(rows, new_ids.tolist(), logprobs.tolist(), strict=True):
            stopped = self.eos_token_id is not None and self.eos_token_id in ids
            length = ids.index(self.eos_token_id) + 1 if stopped else len(ids)  # keep the EOS token
            finish_reason: FinishReason = "stop" if stopped else "length"
            samples.append(Sample(row, ids[:length], lps[:length], finish_reason))
        return samples
