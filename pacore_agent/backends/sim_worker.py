"""What makes the simulated server stand in for one SGLang worker behind SGLang's router.

`pacore_agent.backends.sim_server.SimServer` uses these when asked (``capacity=``, ``prefix_cache=``;
``pacore sim-server --capacity C --prefix-cache``):

- `DecodeSlots`: at most C sequences decode at once; the rest wait in arrival order, so a worker has a
  throughput (C / latency) and adding workers adds throughput. A request with ``n`` choices decodes
  ``n`` sequences (up to C).
- `PrefixCache`: the prompt prefixes a worker has seen, by blocks of words (the simulator's tokens), as
  SGLang's radix cache keeps them; a request is answered with ``cached_tokens`` = the longest prefix it
  shares with an earlier prompt on this worker.
- `WorkerCounters`: what the tests and ``benchmarks/scaleout.py`` read on ``GET /_sim/stats``: requests
  and choices served, prompt and cached tokens, decode and queue depth, and the choices of each
  synthesis prompt (to measure whether a router keeps a problem's synthesis round on one worker).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from pacore_agent.backends.sim import _SYNTHESIS, _SYNTHESIS_HEAD
from pacore_agent.exceptions import UsageError

__all__ = ["DecodeSlots", "PrefixCache", "WorkerCounters", "problem_key", "synthesis_problem"]

DEFAULT_BLOCK_WORDS = 16
"""Granularity of the simulated prefix cache, in words (= simulated tokens)."""

DEFAULT_MAX_BLOCKS = 1_000_000
"""Prefix blocks a worker remembers before it evicts the oldest."""


def problem_key(text: str) -> str:
    """A short stable id of a text (the keys of `WorkerCounters.synthesis`)."""
    return hashlib.sha256(text.strip().encode()).hexdigest()[:12]


def synthesis_problem(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """The problem of a PaCoRe synthesis prompt (the simulator's parse of it), or ``None``."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = str((last or {}).get("content") or "")
    if not text.startswith(_SYNTHESIS_HEAD):
        return None
    match = _SYNTHESIS.search(text)
    return match.group("problem") if match else None


class DecodeSlots:
    """A worker's decode capacity: ``size`` sequences at once, first come first served.

    Args:
        size: Sequences decoding at once (SGLang's running batch).

    Raises:
        UsageError: ``size`` is below 1.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise UsageError(f"capacity must be at least 1, got {size}")
        self.size = size
        self.free = size
        self.max_busy = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def busy(self) -> int:
        """Sequences decoding now."""
        return self.size - self.free

    @property
    def queued(self) -> int:
        """Requests waiting for slots."""
        return len(self._waiting)

    @asynccontextmanager
    async def hold(self, sequences: int) -> AsyncIterator[None]:
        """Wait for ``sequences`` slots (at most `size`), hold them for the block, then free them."""
        count = max(1, min(sequences, self.size))
        if self._waiting or self.free < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (count, future)
            self._waiting.append(entry)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(count)  # granted just as the client went away
                else:
                    self._waiting.remove(entry)
                    self._wake()  # a smaller request behind it may fit now
                raise
        else:
            self.free -= count
        self.max_busy = max(self.max_busy, self.busy)
        try:
            yield
        finally:
            self._release(count)

    def _release(self, count: int) -> None:
        self.free += count
        self._wake()

    def _wake(self) -> None:
        # In arrival order: the head waits for enough slots rather than being overtaken forever.
        while self._waiting and self._waiting[0][0] <= self.free:
            count, future = self._waiting.popleft()
            self.free -= count
            future.set_result(None)


class PrefixCache:
    """The prompt prefixes one worker has computed, remembered by blocks of words.

    Args:
        block: Block size in words; a prefix is cached in whole blocks, and a whole prompt seen before
            is cached entirely.
        max_blocks: Blocks remembered; the oldest are forgotten first.
    """

    def __init__(self, block: int = DEFAULT_BLOCK_WORDS, max_blocks: int = DEFAULT_MAX_BLOCKS) -> None:
        if block < 1 or max_blocks < 1:
            raise UsageError("the prefix cache's block and max_blocks must be at least 1")
        self.block = block
        self.max_blocks = max_blocks
        self._blocks: dict[bytes, None] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup_and_insert(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """The prompt's tokens (words) already cached here; the prompt is cached from now on."""
        words = _prompt_words(messages)
        digest = hashlib.sha256()
        keys: list[tuple[int, bytes]] = []
        for start in range(0, len(words), self.block):
            digest.update("\x00".join(words[start : start + self.block]).encode())
            digest.update(b"\x01")
            keys.append((min(start + self.block, len(words)), digest.copy().digest()))
        cached = 0
        for length, key in keys:
            if key not in self._blocks:
                break
            cached = length
        for _, key in keys:
            self._blocks.pop(key, None)  # re-inserted last: recently used blocks are evicted last
            self._blocks[key] = None
        while len(self._blocks) > self.max_blocks:
            del self._blocks[next(iter(self._blocks))]
        return cached

    def clear(self) -> None:
        """Forget everything (SGLang's ``/flush_cache``)."""
        self._blocks.clear()


def _prompt_words(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    words: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        # The role opens each message, as a chat template's header tokens do.
        words += [f"<|{message.get('role')}|>", *str(content or "").split()]
    return words


@dataclass
class WorkerCounters:
    """Per-worker counters (``GET /_sim/stats``).

    Attributes:
        name: The worker's name (``--worker-name``), to tell workers apart in reports.
        arrived: Requests received.
        prompt_tokens: Prompt tokens of the requests received.
        cached_tokens: Of those, the tokens found in the prefix cache.
        synthesis: Choices of synthesis-round requests received, by `problem_key` of their prompt: one
            key per problem and round, as the round's K requests share the prompt P(x, M).
    """

    name: str = ""
    arrived: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    synthesis: Counter[str] = field(default_factory=Counter)
