"""Save and resume PPO training.

A checkpoint is a directory::

    actor.safetensors      the actor's weights (tied weights handled by safetensors' save_model)
    critic.safetensors     the critic's weights, value head included
    trainer.pt             both optimizers' states, the mini-batch shuffling generator, the step, the config

It is written to a sibling ``<name>.tmp`` directory first and renamed into place, so a crash while
saving never leaves a half-written checkpoint under the final name. To serve the actor (e.g. with
SGLang), export it separately with ``trainer.actor.save_pretrained(path)``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from pacore_agent.exceptions import UsageError
from training.ppo import PPOTrainer

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(directory: str | Path, trainer: PPOTrainer, step: int) -> Path:
    """Write the trainer's full state after ``step`` PPO updates to ``directory`` (replacing it)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(trainer.actor, str(tmp / "actor.safetensors"))
    save_model(trainer.critic, str(tmp / "critic.safetensors"))
    torch.save(
        {
            "step": step,
            "actor_optimizer": trainer.actor_optimizer.state_dict(),
            "critic_optimizer": trainer.critic_optimizer.state_dict(),
            "generator": trainer.generator.get_state(),
            "config": dataclasses.asdict(trainer.config),
        },
        tmp / "trainer.pt",
    )
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory


def load_checkpoint(directory: str | Path, trainer: PPOTrainer) -> int:
    """Restore a trainer built like the saved one from ``directory``; return the step it was saved at.

    Raises:
        UsageError: ``directory`` is not a checkpoint.
    """
    directory = Path(directory)
    if not (directory / "trainer.pt").is_file():
        raise UsageError(f"{directory} is not a PPO checkpoint: it has no trainer.pt")
    device = str(trainer.device)
    load_model(trainer.actor, str(directory / "actor.safetensors"), device=device)
    load_model(trainer.critic, str(directory / "critic.safetensors"), device=device)
    state = torch.load(directory / "trainer.pt", map_location=device, weights_only=True)
    trainer.actor_optimizer.load_state_dict(state["actor_optimizer"])
    trainer.critic_optimizer.load_state_dict(state["critic_optimizer"])
    trainer.generator.set_state(state["generator"].cpu())
    return int(state["step"])
