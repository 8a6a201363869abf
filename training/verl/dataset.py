"""`PacoreSynthesisDataset`: verl's custom dataset for PaCoRe synthesis training.

verl loads it through its custom-dataset hook::

    data.custom_cls.path=pkg://training.verl.dataset
    data.custom_cls.name=PacoreSynthesisDataset
    data.train_files=[stage1.jsonl]          # pool entries (training.curriculum writes them)

and constructs it as it constructs ``verl.utils.dataset.rl_dataset.RLHFDataset``:
``(data_files, tokenizer, config, processor=None, max_samples=-1)``. Items have RLHFDataset's layout (the
chat under ``data.prompt_key`` and as ``raw_prompt``, ``data_source``, ``reward_model.ground_truth``,
``extra_info``, ``index``, ``tools_kwargs``, ``interaction_kwargs``, ``dummy_tensor``), so verl's agent
loop applies the chat template and generates as for any dataset.

Every ``__getitem__`` draws a FRESH message set: |M| ~ U(lo, hi) of the problem's pooled messages
(`training.env.SynthesisEnv.episode`), seeded by (seed, step, index) where index is the item and step
comes from a per-item draw counter combined with the DataLoader worker's seed. Workers that are re-created
every epoch get a new seed from the loader each epoch, persistent workers and the main process keep
counting, so each epoch sees new message sets either way, reproducibly for a seeded loader. The draw is
recorded in ``extra_info`` (``step``, ``message_indices``, ``message_correct``), so
`training.verl.reward.compute_score` can report the episode's flags and any episode can be re-drawn.

Settings (optional, added with Hydra's ``+``): ``+data.pacore.lo=16``, ``+data.pacore.hi=24``,
``+data.pacore.seed=0`` (default: ``data.seed``, else 0). With ``data.filter_overlong_prompts=True`` and a
tokenizer, problems whose LONGEST possible prompt (the ``hi`` longest messages) exceeds
``data.max_prompt_length`` tokens are dropped up front, so no draw is ever cut.

One message set serves all ``rollout.n`` responses of an item (verl repeats the item n times): each group
of n responses shares P(x, M), and a new group gets a new M.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pacore_agent.evaluation.store import PoolEntry
from pacore_agent.prompts import build_prompt
from training.env import DEFAULT_HI, DEFAULT_LO, EnvConfig, Episode, SynthesisEnv, apply_chat_template
from training.pool import load_pool_entries

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    _Base = Dataset[dict[str, Any]]
else:
    try:
        from torch.utils.data import Dataset as _Base
    except ImportError:  # pragma: no cover - verl always has torch; the adapter is importable without
        _Base = object

__all__ = ["DATA_SOURCE_PREFIX", "PacoreSynthesisDataset", "ground_truth_of"]

logger = logging.getLogger(__name__)

DATA_SOURCE_PREFIX = "pacore/"
"""``data_source`` of every item: ``pacore/math`` or ``pacore/code`` (verl groups metrics by it)."""


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` for a dict, an OmegaConf DictConfig, or None."""
    if config is None:
        return default
    value = config.get(key, default)
    return default if value is None else value


def ground_truth_of(entry_or_episode: PoolEntry | Episode) -> str:
    """The ``reward_model.ground_truth`` of an item: the answer (math) or the tests as JSON (code)."""
    if isinstance(entry_or_episode, Episode):
        problem = entry_or_episode.problem
        if problem.domain == "code":
            return json.dumps([t.model_dump() for t in problem.tests])
        return problem.answer
    if entry_or_episode.domain == "code":
        return json.dumps(entry_or_episode.metadata.get("tests") or [])
    return entry_or_episode.answer


class PacoreSynthesisDataset(_Base):
    """Pool entries as a verl dataset whose items draw a new message set each time.

    Args:
        data_files: One or more pool files (JSONL of `PoolEntry`, as the curriculum writes) or pool
            directories.
        tokenizer: The policy's tokenizer; used only to drop over-long problems (see the module).
        config: verl's ``data`` config (a DictConfig or a dict): ``prompt_key``, ``max_prompt_length``,
            ``filter_overlong_prompts``, ``apply_chat_template_kwargs``, ``seed`` and the optional
            ``pacore`` block (``lo``, ``hi``, ``seed``).
        processor: Unused (text only); accepted for verl's constructor signature.
        max_samples: Keep only the first ``max_samples`` problems (-1: all).

    Raises:
        EnvDataError: A pool has fewer than ``lo`` messages, or a problem lacks its answer or tests.
    """

    def __init__(
        self,
        data_files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        tokenizer: Any = None,
        config: Any = None,
        processor: Any = None,
        max_samples: int = -1,
    ) -> None:
        files = [data_files] if isinstance(data_files, str | os.PathLike) else list(data_files)
        entries: list[PoolEntry] = []
        for path in files:
            entries.extend(load_pool_entries(os.path.expanduser(os.fspath(path))))
        if max_samples is not None and max_samples > 0:
            entries = entries[:max_samples]
        pacore = _get(config, "pacore", {})
        self.env_config = EnvConfig(
            lo=int(_get(pacore, "lo", DEFAULT_LO)),
            hi=int(_get(pacore, "hi", DEFAULT_HI)),
            seed=int(_get(pacore, "seed", _get(config, "seed", 0))),
        )
        self.prompt_key: str = str(_get(config, "prompt_key", "prompt"))
        self.tokenizer = tokenizer
        self.processor = processor
        self.chat_template_kwargs = dict(_get(config, "apply_chat_template_kwargs", {}))
        self.env = SynthesisEnv(entries, self.env_config)
        max_prompt_length = _get(config, "max_prompt_length")
        if (
            tokenizer is not None
            and max_prompt_length
            and bool(_get(config, "filter_overlong_prompts", False))
        ):
            fits = [self._longest_prompt(i) <= int(max_prompt_length) for i in range(len(self.env))]
            for position, fit in enumerate(fits):
                if not fit:
                    logger.warning(
                        "dropping %s: its longest prompt is over %s tokens",
                        entries[position].problem_id,
                        max_prompt_length,
                    )
            self.env = SynthesisEnv([e for e, fit in zip(entries, fits, strict=True) if fit], self.env_config)
        self._draws: dict[int, int] = {}

    def _longest_prompt(self, position: int) -> int:
        """Tokens of problem ``position``'s longest possible prompt: its ``hi`` longest messages."""
        entry = self.env.entry(position)
        longest = sorted((m.message for m in entry.messages), key=len, reverse=True)[: self.env_config.hi]
        prompt = build_prompt(self.env.problem(position).messages, longest, self.env_config.template)
        return len(apply_chat_template(self.tokenizer, prompt, tokenize=True, **self.chat_template_kwargs))

    def __len__(self) -> int:
        return len(self.env)

    def _next_step(self, item: int) -> tuple[int, int]:
        """(draw count of this item in this process, step) for the next draw of ``item``."""
        count = self._draws.get(item, 0)
        self._draws[item] = count + 1
        worker_seed = _worker_seed()
        if worker_seed is None:
            return count, count
        digest = hashlib.sha256(f"{worker_seed}|{count}".encode()).digest()
        return count, int.from_bytes(digest[:7], "big")

    def __getitem__(self, item: int) -> dict[str, Any]:
        """A fresh episode of problem ``item`` in RLHFDataset's item layout."""
        draw, step = self._next_step(int(item))
        episode = self.env.episode(int(item), step=step, index=int(item))
        return self.row(episode, draw=draw)

    def row(self, episode: Episode, *, draw: int = 0) -> dict[str, Any]:
        """The verl item of an episode (see the module docstring for the keys)."""
        problem = episode.problem
        extra_info = {
            "index": episode.index,
            "problem_id": problem.id,
            "domain": problem.domain,
            "step": episode.step,
            "draw": draw,
            "num_messages": len(episode.references),
            "message_indices": list(episode.message_indices),
            "message_correct": list(episode.message_correct),
            "tools_kwargs": {},
            "interaction_kwargs": {},
        }
        row: dict[str, Any] = {
            self.prompt_key: episode.prompt,
            "raw_prompt": episode.prompt,
            "data_source": DATA_SOURCE_PREFIX + problem.domain,
            "ability": problem.domain,
            "reward_model": {"style": "rule", "ground_truth": ground_truth_of(episode)},
            "extra_info": extra_info,
            "index": episode.index,
            "tools_kwargs": {},
            "interaction_kwargs": {},
        }
        dummy = _dummy_tensor()
        if dummy is not None:
            row["dummy_tensor"] = dummy
        return row

    def resume_dataset_state(self) -> None:
        """Called by verl when it resumes from a checkpoint: nothing to do, the pools are loaded."""


def _worker_seed() -> int | None:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover
        return None
    info = get_worker_info()
    return None if info is None else int(info.seed)


def _dummy_tensor() -> Any:
    """The one tensor per item that verl's DataProto needs (RLHFDataset ships a uint8 ``[0]``)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    return torch.tensor([0], dtype=torch.uint8)
