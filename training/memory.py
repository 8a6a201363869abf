"""What a single-node run holds in memory, checked before any weight is loaded, and the bf16 optimizer.

The trainer keeps, on one device and without sharding, an actor and a critic (the actor's base model with
a scalar head), each with its gradients and its AdamW states. Per parameter, in bytes:

========  =======  =========  ==========================================  =====
precision  weights  gradients  optimizer states                            total
========  =======  =========  ==========================================  =====
fp32       4        4          8 (two fp32 moments)                        16
bf16       2        2          8 (two fp32 moments) + 2 (fp16 Kahan term)   14
========  =======  =========  ==========================================  =====

so a 4B model takes 2 x 4B x 14 bytes, about 112 GB, in bf16 (it fits one 141 GB H200 with room for
activations under gradient checkpointing) and 128 GB in fp32; an 8B model needs about 221 GB and must be
sharded: that is verl's job (``training/verl``, FSDP over many GPUs). Activations are not counted: they
scale with ``--max-tokens-per-micro-batch`` and ``--gradient-checkpointing`` cuts them to about one
layer's worth. `estimate_memory` states the sum from the model's config alone (a meta-device model, no
weights downloaded); `check_fits` refuses a run that cannot fit the device, naming verl.

`BF16AdamW` is AdamW for bf16 parameters: its moments are fp32, and each update goes through a Kahan
compensation buffer, so that steps far below bf16's resolution accumulate instead of rounding away
(an LLM weight of 0.02 has a bf16 spacing of 1.2e-4, 60 times the paper's lr of 2e-6), without an fp32
master copy (4 more bytes). The buffer is fp16: it only holds less than half a bf16 spacing, and fp16's
11 significant bits keep that to about 0.05% where bf16's 8 would lose about 0.4% of it per step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from pacore_agent.exceptions import UsageError

__all__ = [
    "BYTES_PER_PARAMETER",
    "HEADROOM",
    "BF16AdamW",
    "MemoryEstimate",
    "Precision",
    "check_fits",
    "count_parameters",
    "device_memory",
    "estimate_memory",
]

Precision = Literal["fp32", "bf16"]
"""How the trainer holds weights: fp32, or bf16 weights and gradients with fp32 optimizer moments."""

BYTES_PER_PARAMETER: dict[str, dict[str, int]] = {
    "fp32": {"weights": 4, "gradients": 4, "optimizer": 8},
    "bf16": {"weights": 2, "gradients": 2, "optimizer": 10},
}
"""Bytes per parameter of each precision (see the module docstring)."""

HEADROOM = 0.85
"""Share of a device the weights, gradients and optimizer states may take; the rest is for activations,
the CUDA context and the allocator's fragmentation."""

GB = 1e9


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the actor and critic, their gradients and optimizer states take.

    Attributes:
        model: The model it was computed for.
        precision: fp32 or bf16.
        actor_parameters: Parameters of the actor (tied weights counted once).
        critic_parameters: Parameters of the critic (the actor's base model and a value head).
        parts: Bytes per part: ``actor/weights``, ``actor/gradients``, ``actor/optimizer`` and the same
            for ``critic``.
    """

    model: str
    precision: Precision
    actor_parameters: int
    critic_parameters: int
    parts: dict[str, int]

    @property
    def total(self) -> int:
        """All parts, in bytes."""
        return sum(self.parts.values())

    def describe(self) -> str:
        """One line: ``memory of Qwen/Qwen3-4B in bf16: actor 4.02B params ... = 112.6 GB``."""
        actor = sum(v for k, v in self.parts.items() if k.startswith("actor/"))
        critic = sum(v for k, v in self.parts.items() if k.startswith("critic/"))
        return (
            f"memory of {self.model} in {self.precision}: actor {self.actor_parameters / 1e9:.2f}B params "
            f"{actor / GB:.1f} GB (weights, gradients, optimizer), critic {self.critic_parameters / 1e9:.2f}B "
            f"params {critic / GB:.1f} GB, total {self.total / GB:.1f} GB before activations"
        )


def estimate_memory(
    actor_parameters: int, critic_parameters: int, precision: Precision, *, model: str = "the model"
) -> MemoryEstimate:
    """The memory of a run from its parameter counts (`BYTES_PER_PARAMETER`).

    Raises:
        UsageError: An unknown precision.
    """
    if precision not in BYTES_PER_PARAMETER:
        raise UsageError(f"--precision must be one of {sorted(BYTES_PER_PARAMETER)}, got {precision!r}")
    sizes = BYTES_PER_PARAMETER[precision]
    parts = {
        f"{role}/{part}": count * per
        for role, count in (("actor", actor_parameters), ("critic", critic_parameters))
        for part, per in sizes.items()
    }
    return MemoryEstimate(model, precision, actor_parameters, critic_parameters, parts)


def count_parameters(config: Any) -> tuple[int, int]:
    """(actor, critic) parameter counts of a transformers causal LM config, built on the meta device.

    Nothing is allocated or downloaded beyond the config; tied weights count once. The critic is the
    base model (no LM head) plus a value head of ``hidden_size + 1`` parameters.
    """
    import transformers

    auto: Any = transformers.AutoModelForCausalLM  # loosely typed: its stubs are partial
    with torch.device("meta"):
        model = auto.from_config(config)
    actor = sum(p.numel() for p in model.parameters())
    critic = sum(p.numel() for p in model.base_model.parameters()) + config.hidden_size + 1
    return actor, critic


def device_memory(device: torch.device) -> int:
    """Total bytes of ``device``: the GPU's memory, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(estimate: MemoryEstimate, available: int, *, where: str) -> None:
    """Refuse a run whose weights, gradients and optimizer states exceed `HEADROOM` of ``available``.

    Raises:
        UsageError: It does not fit; the message names the sizes, the bf16 alternative and verl.
    """
    if estimate.total <= HEADROOM * available:
        return
    hint = ""
    if estimate.precision == "fp32":
        smaller = estimate_memory(estimate.actor_parameters, estimate.critic_parameters, "bf16")
        if smaller.total <= HEADROOM * available:
            hint = f" --precision bf16 needs {smaller.total / GB:.1f} GB and fits;"
    raise UsageError(
        f"{estimate.describe()}: more than {HEADROOM:.0%} of the {available / GB:.1f} GB of {where}. "
        f"This single-node trainer does not shard the actor and critic.{hint} Use a smaller --model, or "
        "train with verl (training/verl/README.md), which shards them over many GPUs with FSDP "
        "(--no-memory-check runs anyway)."
    )


class BF16AdamW(torch.optim.Optimizer):
    """AdamW for bf16 parameters: fp32 moments and an fp16 Kahan compensation per parameter.

    The update is the same as ``torch.optim.AdamW``'s (decoupled weight decay, bias correction); on
    fp32 parameters it matches it to rounding. On bf16 parameters the part of each update that bf16
    cannot represent is kept in the compensation buffer and added back at the next step.

    Args:
        params: Parameters (or parameter groups).
        lr: Learning rate.
        betas: Moment decay rates.
        eps: Denominator term.
        weight_decay: Decoupled weight decay.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.float()
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32)
                    state["compensation"] = torch.zeros_like(param, dtype=torch.float16)
                state["step"] += 1
                step = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(eps)
                current = param.float()
                update = -lr * decay * current - (lr / (1 - beta1**step)) * exp_avg / denom
                # Kahan: the compensation holds what earlier roundings of the parameter lost.
                wanted = update + state["compensation"].float()
                new = (current + wanted).to(param.dtype)
                state["compensation"].copy_(wanted - (new.float() - current))
                param.copy_(new)
        return loss
