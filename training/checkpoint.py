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

A training run keeps its checkpoints in ``OUT/checkpoints/step-<steps done>``. Each carries the run's
fingerprint (`config_fingerprint`: the model, a digest of the pool, the seed and how episodes are drawn);
`resume_point` picks the newest and refuses one written under another fingerprint, naming the fields
that differ (`FingerprintError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors.torch import load_model, save_model

from pacore_agent.evaluation.store import PoolEntry
from pacore_agent.exceptions import UsageError
from training.ppo import PPOTrainer

__all__ = [
    "CHECKPOINT_PREFIX",
    "FINGERPRINT_FIELDS",
    "FingerprintError",
    "FingerprintSettings",
    "capture_rng_state",
    "checkpoint_metadata",
    "checkpoint_rng_state",
    "config_fingerprint",
    "fingerprint_differences",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "model_id",
    "pool_digest",
    "restore_rng_state",
    "resume_point",
    "resume_state",
    "save_checkpoint",
    "save_run_checkpoint",
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


# ----------------------------------------------------------------------------------------------------
# Runs: which checkpoint a run resumes from, and whether it belongs to the run


CHECKPOINT_PREFIX = "step-"
"""Checkpoint directories are ``OUT/checkpoints/step-<steps done, 6 digits>``."""

FINGERPRINT_FIELDS = (
    "model",
    "pool",
    "problems",
    "seed",
    "problems_per_step",
    "responses_per_problem",
    "min_messages",
    "max_messages",
    "shared_message_set",
    "stage",
    "math_threshold",
    "code_threshold",
    "stage2_samples",
    "precision",
)
"""What a checkpoint must agree on to be resumed: the model, the data, how episodes are drawn and the
curriculum that selects them."""


class FingerprintSettings(Protocol):
    """The run settings a fingerprint reads (`training.train.TrainConfig` has them)."""

    @property
    def model(self) -> str:
        """``--model``."""

    @property
    def seed(self) -> int:
        """``--seed``."""

    @property
    def problems_per_step(self) -> int:
        """``--problems-per-step``."""

    @property
    def responses_per_problem(self) -> int:
        """``--responses-per-problem``."""

    @property
    def min_messages(self) -> int:
        """``--min-messages``."""

    @property
    def max_messages(self) -> int:
        """``--max-messages``."""

    @property
    def shared_message_set(self) -> bool:
        """``--shared-message-set``."""

    @property
    def stage(self) -> str:
        """``--stage``."""

    @property
    def math_threshold(self) -> float:
        """``--math-threshold``."""

    @property
    def code_threshold(self) -> float:
        """``--code-threshold``."""

    @property
    def stage2_samples(self) -> int:
        """``--stage2-samples``."""

    @property
    def precision(self) -> str:
        """``--precision``."""


def pool_digest(entries: Sequence[PoolEntry]) -> str:
    """A SHA-256 of what training reads from a pool: problems, answers, tests, messages and grades.

    It does not depend on the order of the entries, their timestamps or where the pool lives.
    """
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.problem_id):
        record = [
            entry.problem_id,
            entry.problem,
            entry.answer,
            entry.domain,
            entry.metadata.get("tests"),
            entry.metadata.get("conversation"),
            [[m.message, m.correct, m.score] for m in entry.messages],
        ]
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def model_id(model: str) -> str:
    """A local folder as its absolute path (so a resume from another directory still matches)."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


def config_fingerprint(config: FingerprintSettings, entries: Sequence[PoolEntry]) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it (`FINGERPRINT_FIELDS`)."""
    derived = {"model": model_id(config.model), "pool": pool_digest(entries), "problems": len(entries)}
    return {name: derived[name] if name in derived else getattr(config, name) for name in FINGERPRINT_FIELDS}


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One line per fingerprint field that differs: ``seed: 0 in the checkpoint, 1 now``."""
    missing = object()
    return [
        f"{name}: {saved.get(name, missing)!r} in the checkpoint, {current.get(name)!r} now".replace(
            repr(missing), "nothing"
        )
        for name in FINGERPRINT_FIELDS
        if saved.get(name, missing) != current.get(name)
    ]


class FingerprintError(UsageError):
    """A checkpoint was written under another configuration than the one resuming it.

    Attributes:
        checkpoint: The checkpoint directory.
        differences: One line per field that differs.
    """

    def __init__(self, checkpoint: Path, differences: list[str]) -> None:
        lines = "\n  ".join(differences)
        super().__init__(
            f"checkpoint {checkpoint} was written by a different configuration:\n  {lines}\n"
            "Resume with the same settings, start a new run with another --out, or pass --force-resume "
            "to continue from it anyway."
        )
        self.checkpoint = checkpoint
        self.differences = differences


def latest_checkpoint(out: str | os.PathLike[str]) -> Path | None:
    """The run directory's newest complete checkpoint (``checkpoints/step-N`` with the largest N)."""
    found = list_checkpoints(Path(out))
    return found[-1][1] if found else None


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """The run directory's complete checkpoints as (steps done, path), oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        suffix = path.name.removeprefix(CHECKPOINT_PREFIX)
        if path.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() and (path / "trainer.pt").is_file():
            found.append((int(suffix), path))
    return sorted(found)


def resume_point(
    out: Path,
    fingerprint: Mapping[str, Any],
    *,
    resume: Literal["auto", "yes", "no"] = "auto",
    force_resume: bool = False,
) -> Path | None:
    """The checkpoint of ``out`` to resume from (None: start fresh), after checking it belongs to this run.

    Args:
        out: The run directory.
        fingerprint: This run's `config_fingerprint`.
        resume: auto: the latest checkpoint when there is one; yes: require one; no: refuse a directory
            that holds one.
        force_resume: Resume despite fingerprint differences (they are printed as a warning).

    Raises:
        UsageError: ``resume`` cannot be honoured.
        FingerprintError: The checkpoint was written under another configuration.
    """
    checkpoint = latest_checkpoint(out)
    if resume == "no" and checkpoint is not None:
        raise UsageError(
            f"{out} already holds a checkpoint ({checkpoint.name}): use another --out, or --resume auto"
        )
    if resume == "yes" and checkpoint is None:
        raise UsageError(f"--resume yes: {out} holds no checkpoint to resume from")
    if checkpoint is None:
        return None
    saved = checkpoint_metadata(checkpoint).get("fingerprint", {})
    differences = fingerprint_differences(saved, fingerprint)
    if differences and not force_resume:
        raise FingerprintError(checkpoint, differences)
    if differences:
        print("warning: --force-resume despite:\n  " + "\n  ".join(differences), file=sys.stderr)
    return checkpoint


def save_run_checkpoint(
    out: Path, trainer: PPOTrainer, steps_done: int, *, metadata: Mapping[str, Any], keep: int
) -> Path:
    """Save ``OUT/checkpoints/step-N`` with the process's random states, keeping the newest ``keep``."""
    path = out / "checkpoints" / f"{CHECKPOINT_PREFIX}{steps_done:06d}"
    save_checkpoint(path, trainer, steps_done, metadata=metadata, rng_state=capture_rng_state())
    for _, old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def resume_state(checkpoint: Path, trainer: PPOTrainer) -> tuple[int, dict[str, Any]]:
    """Load ``checkpoint`` into ``trainer`` and put back the random states: (steps done, its metadata)."""
    steps_done = load_checkpoint(checkpoint, trainer)
    rng = checkpoint_rng_state(checkpoint)
    if rng is not None:
        restore_rng_state(rng)
    return steps_done, checkpoint_metadata(checkpoint)


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
