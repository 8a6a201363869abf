"""P(x, M): the synthesis prompt and the conversation rewriting.

When M is empty the conversation is sent unchanged. Otherwise only the LAST user message's content is
replaced by the synthesis template rendered with the original problem (that message's text) and the
references; every other message stays as it is. The template is the exact text PaCoRe-8B was trained
on, rendered with Jinja2's default settings, as the official pipeline does.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import jinja2

from pacore_agent.exceptions import UsageError

__all__ = [
    "SYNTHESIS_TEMPLATE",
    "Messages",
    "SynthesisTemplate",
    "blind_prompt",
    "build_prompt",
    "last_user_index",
    "message_text",
    "normalize_problem",
    "render_synthesis",
]

Messages = list[dict[str, Any]]

SYNTHESIS_TEMPLATE: str = (
    resources.files("pacore_agent").joinpath("templates/synthesis.jinja").read_text(encoding="utf-8")
)
"""The synthesis template PaCoRe-8B was trained on (Jinja2 source)."""

SynthesisTemplate = str | jinja2.Template | Callable[[str, Sequence[str]], str]
"""Jinja2 source, a compiled template (both get ``original_prompt`` and ``ref_responses``), or a
callable ``(original_prompt, references) -> prompt``."""


def blind_prompt(original_prompt: str, references: Sequence[str]) -> str:
    """The blind counterfactual's "synthesis" prompt: the problem alone, the references withheld.

    As the ``template`` of a `Coordinator` it gives ``pacore-blind``: the same schedule and compute as
    PaCoRe, but every round after the first re-solves the problem without seeing the messages. The gap
    between PaCoRe and it measures what the model gains by reading its messages (no gap: "reasoning
    solipsism").

    Args:
        original_prompt: The text of the last user message of the original conversation.
        references: The messages the round would have been given (ignored).

    Returns:
        ``original_prompt`` unchanged.
    """
    return original_prompt


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    # Jinja2 defaults on purpose: the trained prompt is the default rendering (trailing newline dropped).
    template: jinja2.Template = jinja2.Template(source)
    return template


def render_synthesis(
    original_prompt: str, references: Sequence[str], template: SynthesisTemplate | None = None
) -> str:
    """Render the synthesis prompt for a problem and its ordered reference messages.

    Args:
        original_prompt: The text of the last user message of the original conversation.
        references: The compacted messages, in reference order.
        template: Override of the default template.

    Returns:
        The prompt that replaces the last user message.
    """
    if template is None or isinstance(template, str):
        compiled = _compile(SYNTHESIS_TEMPLATE if template is None else template)
    elif isinstance(template, jinja2.Template):
        compiled = template
    else:
        return template(original_prompt, list(references))
    return compiled.render(original_prompt=original_prompt, ref_responses=list(references))


def message_text(message: dict[str, Any]) -> str:
    """The text of a chat message: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    raise UsageError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def last_user_index(messages: Messages) -> int:
    """Index of the last user message.

    Raises:
        UsageError: The conversation has no user message.
    """
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    raise UsageError("the conversation has no user message: PaCoRe needs a user turn holding the problem")


def normalize_problem(problem: str | Sequence[dict[str, Any]]) -> Messages:
    """Turn a problem (a string or OpenAI-style chat messages) into a validated conversation.

    Raises:
        UsageError: Empty problem, malformed messages, or no user turn.
    """
    if isinstance(problem, str):
        if not problem.strip():
            raise UsageError("the problem is empty: pass the problem text or a list of chat messages")
        return [{"role": "user", "content": problem}]
    if not isinstance(problem, Sequence) or not problem:
        raise UsageError("the problem must be a non-empty string or a non-empty list of chat messages")
    messages: Messages = []
    for position, message in enumerate(problem):
        if not isinstance(message, dict) or "role" not in message:
            raise UsageError(
                f"message {position} must be a dict with a 'role' (and 'content'), got {message!r}"
            )
        messages.append(dict(message))
    user = messages[last_user_index(messages)]
    if not message_text(user).strip():
        raise UsageError("the last user message is empty: it must hold the problem")
    return messages


def build_prompt(
    messages: Messages, references: Sequence[str], template: SynthesisTemplate | None = None
) -> Messages:
    """P(x, M): the conversation a round sends.

    Args:
        messages: The original conversation (see `normalize_problem`).
        references: The previous round's messages, in reference order; empty for the first round.
        template: Override of the synthesis template.

    Returns:
        ``messages`` itself when ``references`` is empty; otherwise a copy whose last user message's
        content is the rendered synthesis prompt, history kept.
    """
    if not references:
        return messages
    index = last_user_index(messages)
    rewritten = copy.deepcopy(messages)
    rewritten[index]["content"] = render_synthesis(message_text(messages[index]), references, template)
    return rewritten
