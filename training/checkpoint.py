"""Save and resume PPO training.

A checkpoint is a directory::

    actor.safetensors      the actor's weights (tied weights handled by safetensors' save_model)
    critic.safetensors     the critic's weights, value head included
    trainer.pt             both optimizers' states, the mini-batch shuffling generator, the step, the config,
                           and (when given) the process's random generator states
    metadata.json          (when given) what the caller needs to resume: data position, config
                           fingerprint, ... as readable JSON

It is written to a sibling ``<name>.tmp`` directory first, every file is fsynced, and the directory is
renamed into place, so a crash while saving never leaves a half-written checkpoint under the final name.
Checkpoints written before ``metadata.json`` and the random states existed still load:
`checkpoint_metadata` gives ``{}`` and `checkpoint_rng_state` None for them. To serve the actor (e.g. with
SGLang), export it separately with ``trainer.actor.save_pretrained(path)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from pacore_agent.exceptions import UsageError
from training.ppo import PPOTrainer

__all__ = [
    "capture_rng_state",
    "checkpoint_metadata",
    "checkpoint_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]

METADATA_FILENAME = "metadata.json"


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's ``random``, torch's CPU generator and every CUDA device's generator."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back the generator states `capture_rng_state` took (CUDA ones only where CUDA is present)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(
    directory: str | Path,
    trainer: PPOTrainer,
    step: int,
    *,
    metadata: Mapping[str, Any] | None = None,
    rng_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write the trainer's full state after ``step`` PPO updates to ``directory`` (replacing it).

    Args:
        directory: The checkpoint directory.
        trainer: The trainer to save.
        step: PPO updates done.
        metadata: JSON-compatible data saved as ``metadata.json`` (`checkpoint_metadata` reads it).
        rng_state: Random generator states (`capture_rng_state`), saved in ``trainer.pt``.

    Returns:
        The directory.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(trainer.actor, str(tmp / "actor.safetensors"))
    save_model(trainer.critic, str(tmp / "critic.safetensors"))
    state: dict[str, Any] = {
        "step": step,
        "actor_optimizer": trainer.actor_optimizer.state_dict(),
        "critic_optimizer": trainer.critic_optimizer.state_dict(),
        "generator": trainer.generator.get_state(),
        "config": dataclasses.asdict(trainer.config),
    }
    if rng_state is not None:
        state["rng"] = dict(rng_state)
    torch.save(state, tmp / "trainer.pt")
    if metadata is not None:
        text = json.dumps({"step": step, **metadata}, indent=2, sort_keys=True, allow_nan=False)
        (tmp / METADATA_FILENAME).write_text(text + "\n", encoding="utf-8")
    _fsync_tree(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    _fsync_dir(directory.parent)
    return directory


def load_checkpoint(directory: str | Path, trainer: PPOTrainer) -> int:
    """Restore a trainer built like the saved one from ``directory``; return the step it was saved at.

    Only the trainer is restored; random generator states are put back with
    ``restore_rng_state(checkpoint_rng_state(directory))`` when the caller wants them.

    Raises:
        UsageError: ``directory`` is not a checkpoint.
    """
    directory = _checked(directory)
    device = str(trainer.device)
    load_model(trainer.actor, str(directory / "actor.safetensors"), device=device)
    load_model(trainer.critic, str(directory / "critic.safetensors"), device=device)
    state = torch.load(directory / "trainer.pt", map_location=device, weights_only=True)
    trainer.actor_optimizer.load_state_dict(state["actor_optimizer"])
    trainer.critic_optimizer.load_state_dict(state["critic_optimizer"])
    trainer.generator.set_state(state["generator"].cpu())
    return int(state["step"])


def checkpoint_metadata(directory: str | Path) -> dict[str, Any]:
    """The ``metadata`` a checkpoint was saved with (with its ``step``); ``{}`` when it has none.

    Raises:
        UsageError: ``directory`` is not a checkpoint.
    """
    path = _checked(directory) / METADATA_FILENAME
    if not path.is_file():
        return {}
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def checkpoint_rng_state(directory: str | Path) -> dict[str, Any] | None:
    """The random generator states a checkpoint was saved with, or None when it has none.

    Raises:
        UsageError: ``directory`` is not a checkpoint.
    """
    state = torch.load(_checked(directory) / "trainer.pt", map_location="cpu", weights_only=True)
    rng: dict[str, Any] | None = state.get("rng")
    return rng


def _checked(directory: str | Path) -> Path:
    directory = Path(directory)
    if not (directory / "trainer.pt").is_file():
        raise UsageError(f"{directory} is not a PPO checkpoint: it has no trainer.pt")
    return directory


def _fsync_tree(directory: Path) -> None:
    """Flush every file of ``directory`` (and the directory itself) to disk."""
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse fsync on directories
        pass
    finally:
        os.close(fd)
