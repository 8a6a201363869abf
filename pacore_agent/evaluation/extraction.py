"""Extraction from a model's conclusion: the final answer (``\\boxed{}``, "Final answer:" ...) and the program.

A pure policy over its input that never raises: a missing, empty or non-string text has no answer.
"""

from __future__ import annotations

import logging
import re

__all__ = ["extract_answer", "extract_program", "strip_math_delimiters"]

logger = logging.getLogger(__name__)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_BOX_TOKEN_RE = re.compile(r"[^\s$]+")
_ANSWER_MARKER_RE = re.compile(
    r"\bfinal\s+answer\b[ \t]*(?:\*\*|__)?[ \t]*(?:is\b|[:：=]|(?=\r?\n)|\Z)"
    r"|\bthe\s+answer\s+is\b"
    r"|\banswer[ \t]*(?:\*\*|__)?[ \t]*[:：]",
    re.IGNORECASE,
)
_LAST_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_PYTHON_TAGS = frozenset({"python", "py", "python3", "py3"})
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _braced(text: str, start: int) -> str | None:
    r"""The content of the brace group opening at ``text[start] == "{"``, or None when it never closes.

    Escaped braces (``\{``, ``\}``) do not count, so ``\boxed{\{1, 2\}}`` yields ``\{1, 2\}``.
    """
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def strip_math_delimiters(text: str) -> str:
    r"""Strip whitespace and one pair of surrounding math delimiters: ``$``, ``$$``, ``\(\)``, ``\[\]``."""
    text = text.strip()
    for left, right in _MATH_DELIMITERS:
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left) : len(text) - len(right)]
            if left != "$" or "$" not in inner:  # "$a$ and $b$" is not one delimited span
                return inner.strip()
    if text.count("$") == 1 and (text.startswith("$") or text.endswith("$")):  # a lone, unmatched one
        return text.strip("$").strip()
    return text


def _last_boxed(text: str) -> str | None:
    r"""Content of the last well-formed ``\boxed{...}`` / ``\fbox{...}`` / ``\boxed X``; None if none."""
    for match in reversed(list(_BOX_RE.finditer(text))):
        i = match.end()
        j = i
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            content = _braced(text, j)
        elif j > i and (token := _BARE_BOX_TOKEN_RE.match(text, j)):  # "\boxed 5": a token, space needed
            content = token.group().rstrip(".,;")
        else:
            content = None
        if content is not None and (content := strip_math_delimiters(content)):
            return content
    return None


def _clean_span(span: str) -> str | None:
    """The answer at the start of ``span``: a delimited formula, else the text up to the sentence end."""
    span = span.strip().lstrip("*_:：").strip()
    for left, right in _MATH_DELIMITERS:
        if span.startswith(left):
            end = span.find(right, len(left))
            if end > len(left):
                span = span[len(left) : end]
                break
    else:
        sentence_end = re.search(r"\.(?:\s|$)", span)
        if sentence_end:
            span = span[: sentence_end.start()]
    span = span.strip().strip("*_").strip().rstrip(".").strip()
    span = strip_math_delimiters(span)
    return span or None


def _marked_answer(text: str) -> str | None:
    """The answer after the last "Final answer:" / "The final answer is" / "**Answer:**" marker."""
    markers = list(_ANSWER_MARKER_RE.finditer(text))
    if not markers:
        return None
    rest = text[markers[-1].end() :]
    first_line, _, after = rest.partition("\n")
    if not first_line.strip(" \t*_#:："):  # a heading such as "## Final Answer" with the answer below
        first_line = next((line for line in after.split("\n") if line.strip()), "")
    return _clean_span(first_line)


def extract_answer(text: str | None, *, fallback_last_number: bool = False) -> str | None:
    r"""The final answer stated in a conclusion.

    In order of preference:

    1. the content of the last well-formed ``\boxed{...}`` (nested braces allowed), ``\fbox{...}`` or
       brace-less ``\boxed 5``; a box that never closes (a truncated text) is skipped;
    2. the text after the last "Final answer: ...", "The final answer is ...", "The answer is ...",
       "**Answer:** ..." marker (a formula in ``$...$`` is taken whole, else text up to the sentence end;
       a "Final Answer" heading takes the next non-empty line);
    3. only when ``fallback_last_number`` is set: the last number in the text (``1,234`` is read as one
       number and returned without commas; decimals and a leading minus are kept).

    Surrounding ``$`` and whitespace are stripped.

    Args:
        text: A model's conclusion. Anything that is not a non-empty string yields None.
        fallback_last_number: Fall back to the last number when no marked answer is found.

    Returns:
        The answer text, or None when there is none. Never raises.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        answer = _last_boxed(text) or _marked_answer(text)
        if answer is None and fallback_last_number:
            numbers = _LAST_NUMBER_RE.findall(text)
            answer = numbers[-1].replace(",", "") if numbers else None
        return answer
    except Exception:  # pragma: no cover - the parsers above are total; this is the "never crash" promise
        logger.exception("extract_answer failed on a %d-character text", len(text))
        return None


_FENCE_RE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*$")


def extract_program(conclusion: str | None) -> str | None:
    """The program in a conclusion: its last fenced Python code block.

    The last block tagged ``python``/``py``/``python3`` wins; without one, the last untagged block
    (a block tagged with another language is never taken). A final block that never closes (a
    truncated answer) still counts.

    Args:
        conclusion: A model's conclusion.

    Returns:
        The code, or None when there is none (also for empty and non-string input).
    """
    if not isinstance(conclusion, str):
        return None
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    tag = ""
    lines: list[str] = []
    for line in conclusion.splitlines():
        match = _FENCE_RE.match(line)
        if fence is None:
            if match:
                fence, tag, lines = match.group(1), match.group(2).lower(), []
        elif match and match.group(1).startswith(fence) and not match.group(2):  # same char, as long
            blocks.append((tag, "\n".join(lines)))
            fence = None
        else:
            lines.append(line)
    if fence is not None:
        blocks.append((tag, "\n".join(lines)))
    blocks = [(tag, code) for tag, code in blocks if code.strip()]
    for wanted in (_PYTHON_TAGS, frozenset({""})):
        for tag, code in reversed(blocks):
            if tag in wanted:
                return code + "\n"
    return None
