"""Seeds of a benchmark run, derived from the base seed so that every sample is independent and repeatable."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(base: int, *parts: object) -> int:
    """A 31-bit seed from ``base`` and any labels (sample index, problem id, ...), stable across runs."""
    digest = hashlib.sha256("|".join(map(str, (base, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
