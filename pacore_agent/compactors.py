"""C: compactors turn a finished trajectory into the message passed to the next round.

A compactor is a plain callable from the trajectory's text to the message, sync or async. The text is
the whole trajectory (`pacore_agent.results.Trajectory.text`): reasoning wrapped in ``<think>`` when the
server split it out, so ``final_conclusion`` returns exactly the ``content`` in that case.

- `final_conclusion` (default): the text after the last ``</think>``, exactly as it is, or the whole text
  when there is none. This is what PaCoRe-8B was trained with.
- `boxed_only`: only the last ``\\boxed{...}`` of the conclusion.
- `last_tokens(n)`: the last ``n`` tokens, with a pluggable tokenizer.
- `full`: no compaction (the paper's "without message passing" ablation: whole trajectories are passed).
- `summarize(backend)`: an LLM summary of the conclusion, through any backend with its own sampling
  settings. A DEPARTURE from what PaCoRe-8B was trained with (it saw raw conclusions): use it with models
  that were not trained on PaCoRe's messages, or to study compaction, and compare against the default.
  Its tokens are added to the summarized trajectory's usage, so the solve's totals, TTC and budget count
  them.
- `chain(a, b, ...)`: composition, applied left to right.

A compactor that spends tokens reports them with `charge_compaction`; `compact` runs a compactor and
returns the message with what it spent (the coordinator adds that to the trajectory's usage).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol, cast

from pacore_agent.results import Usage

if TYPE_CHECKING:
    from pacore_agent.backends.base import Backend, SamplingParams

__all__ = [
    "SUMMARY_PROMPT",
    "Compactor",
    "Tokenizer",
    "apply_compactor",
    "boxed_only",
    "chain",
    "charge_compaction",
    "compact",
    "final_conclusion",
    "full",
    "last_boxed",
    "last_tokens",
    "summarize",
]

logger = logging.getLogger(__name__)

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
    if not isinstance(result, str) and inspect.isawaitable(result):  # the str check first: it is cheaper
        result = await result
    if not isinstance(result, str):
        raise TypeError(f"compactor {compactor!r} returned {type(result).__name__}, expected str")
    return result


_spent: ContextVar[list[Usage] | None] = ContextVar("pacore_compaction_usage", default=None)
_NOTHING_SPENT = Usage()  # frozen: safe to share


def charge_compaction(usage: Usage) -> None:
    """Report tokens a compactor spent (e.g. on an LLM call); `compact` adds them up."""
    sink = _spent.get()
    if sink is not None:
        sink.append(usage)


async def compact(compactor: Compactor, text: str) -> tuple[str, Usage]:
    """Run a compactor: the message, and the tokens it spent (reported with `charge_compaction`)."""
    token = _spent.set([])
    try:
        message = await apply_compactor(compactor, text)
        charged = _spent.get()
        # Most compactors spend nothing: no new `Usage` for them (it runs once per trajectory).
        spent = Usage.sum(charged) if charged else _NOTHING_SPENT
    finally:
        _spent.reset(token)
    return message, spent


SUMMARY_PROMPT = (
    "Below is the conclusion of a solution to a problem. Summarize it in a few sentences: keep the key "
    "steps, every result it relies on and its final answer exactly as written (including any "
    "\\boxed{{...}}). Do not solve the problem again and do not add anything.\n\n"
    "Conclusion:\n{conclusion}"
)
"""The default prompt of `summarize`; ``{conclusion}`` is replaced by the trajectory's conclusion."""


def summarize(
    backend: Backend,
    *,
    prompt: str = SUMMARY_PROMPT,
    sampling: SamplingParams | None = None,
) -> Callable[[str], Awaitable[str]]:
    """A compactor asking a model (through ``backend``) for a summary of the trajectory's conclusion.

    NOT what PaCoRe-8B was trained with: the model learned to synthesize raw conclusions
    (`final_conclusion`), so this is a departure to compare against the default, not an improvement to
    assume. The message is C(summary reply), the text after its last ``</think>``. The request goes
    through the backend's limiter with the default retry policy; its tokens are reported with
    `charge_compaction`, so the coordinator adds them to the trajectory's usage (they then count in the
    solve's totals, TTC and budget; the request itself is not one of the solve's ``calls``). A request
    that still fails leaves the plain conclusion as the message, with a warning logged.

    Args:
        backend: Where the summary comes from (any backend; it may differ from the solver's).
        prompt: The request text, with ``{conclusion}`` where the conclusion goes.
        sampling: The summary's own sampling settings (default temperature 0, at most 1024 tokens).

    Raises:
        UsageError: ``prompt`` has no ``{conclusion}`` field.
    """
    from pacore_agent.backends.base import GenerationRequest, SamplingParams
    from pacore_agent.exceptions import BackendError, UsageError
    from pacore_agent.retry import RetryPolicy, call_with_retries

    if "{conclusion}" not in prompt:
        raise UsageError("the summarize prompt needs a {conclusion} field where the conclusion goes")
    settings = sampling or SamplingParams(temperature=0.0, top_p=1.0, max_tokens=1024)
    policy = RetryPolicy()

    async def compact_summary(text: str) -> str:
        conclusion = final_conclusion(text)
        request = GenerationRequest(
            messages=[{"role": "user", "content": prompt.format(conclusion=conclusion)}], sampling=settings
        )
        try:
            call = await call_with_retries(backend, request, policy)
        except BackendError as error:
            logger.warning("summarize: the summary request failed (%s); the conclusion is the message", error)
            return conclusion
        reply = call.completions[0]
        charge_compaction(reply.usage)
        return final_conclusion(reply.content or "") or conclusion

    compact_summary.__name__ = f"summarize({backend.name})"
    return compact_summary
