"""C: compactors turn a finished trajectory into the message passed to the next round.

A compactor is a plain callable from the trajectory's text to the message, sync or async. The text is
the whole trajectory (`pacore_agent.results.Trajectory.text`): reasoning wrapped in ``<think>`` when the
server split it out, so ``final_conclusion`` returns exactly the ``content`` in that case.

- `final_conclusion` (default): the text after the last ``</think>``, exactly as it is, or the whole text
  when there is none. This is what PaCoRe-8B was trained with.
- `boxed_only`: only the last ``\\boxed{...}`` of the conclusion.
- `last_tokens(n)`: the last ``n`` tokens, with a pluggable tokenizer.
- `full`: no compaction (the paper's "without message passing" ablation: whole trajectories are passed).
- `chain(a, b, ...)`: composition, applied left to right.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, cast

__all__ = [
    "Compactor",
    "Tokenizer",
    "apply_compactor",
    "boxed_only",
    "chain",
    "final_conclusion",
    "full",
    "last_boxed",
    "last_tokens",
]

Compactor = Callable[[str], str] | Callable[[str], Awaitable[str]]
"""Maps a trajectory's text to its message."""

THINK_END = "</think>"


class Tokenizer(Protocol):
    """What `last_tokens` needs: tiktoken encodings and Hugging Face tokenizers both fit."""

    def encode(self, text: str) -> Sequence[int]:
        """Token ids of ``text``."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
        ...


def final_conclusion(text: str) -> str:
    """The text after the last ``</think>``, unchanged (no stripping); the whole text when there is none."""
    _, sep, tail = text.rpartition(THINK_END)
    return tail if sep else text


def full(text: str) -> str:
    """No compaction: the whole trajectory, reasoning included."""
    return text


def last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text`` with balanced braces, or ``None``."""
    best: str | None = None
    best_pos = -1
    for command in ("\\boxed", "\\fbox"):
        pos = text.rfind(command + "{")
        if pos > best_pos:
            end = _matching_brace(text, pos + len(command))
            if end is not None:
                best, best_pos = text[pos : end + 1], pos
    return best


def _matching_brace(text: str, open_pos: int) -> int | None:
    depth = 0
    for index in range(open_pos, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
    return None


def boxed_only(text: str) -> str:
    """Only the last ``\\boxed{...}`` of the conclusion; the conclusion unchanged when it has none."""
    conclusion = final_conclusion(text)
    return last_boxed(conclusion) or conclusion


def last_tokens(n: int, tokenizer: Tokenizer | str = "o200k_base") -> Callable[[str], str]:
    """A compactor keeping the last ``n`` tokens of its input.

    Args:
        n: Tokens to keep.
        tokenizer: A tiktoken encoding name (for hosted OpenAI models; loaded offline from the
            ``bpe-openai`` wheel when present), or any object with ``encode``/``decode`` such as a
            Hugging Face tokenizer for local models.
    """
    if n <= 0:
        from pacore_agent.exceptions import UsageError

        raise UsageError(f"last_tokens needs a positive token count, got {n}")
    resolved: Tokenizer | None = None if isinstance(tokenizer, str) else tokenizer

    def compact(text: str) -> str:
        nonlocal resolved
        if resolved is None:
            from pacore_agent.tokenizers import tiktoken_encoding

            resolved = cast(Tokenizer, tiktoken_encoding(cast(str, tokenizer)))
        ids = list(resolved.encode(text))
        return text if len(ids) <= n else resolved.decode(ids[-n:])

    compact.__name__ = f"last_tokens({n})"
    return compact


def chain(*compactors: Compactor) -> Callable[[str], Awaitable[str]]:
    """Compose compactors left to right: ``chain(final_conclusion, last_tokens(512))``."""

    async def compact(text: str) -> str:
        for compactor in compactors:
            text = await apply_compactor(compactor, text)
        return text

    compact.__name__ = "chain(" + ", ".join(getattr(c, "__name__", repr(c)) for c in compactors) + ")"
    return compact


async def apply_compactor(compactor: Compactor, text: str) -> str:
    """Run a sync or async compactor."""
    result = compactor(text)
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, str):
        raise TypeError(f"compactor {compactor!r} returned {type(result).__name__}, expected str")
    return result
