"""Tokenizers for counting and truncating text, offline where possible.

tiktoken downloads its BPE files at first use. The ``bpe-openai`` wheel ships the same files
(``o200k_base``, ``cl100k_base``; same hashes), so `tiktoken_encoding` seeds tiktoken's cache from it
and never needs the network for those encodings.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["tiktoken_encoding"]

_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
_BUNDLED = ("o200k_base", "cl100k_base")


def _tiktoken_cache_dir() -> Path:
    # The same lookup order tiktoken uses.
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def _seed_cache(name: str) -> None:
    # Locate the wheel's data without importing bpe_openai (its import does work we do not need).
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        return
    bundled = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"
    if not bundled.exists():
        return
    data = gzip.decompress(bundled.read_bytes())
    cache = _tiktoken_cache_dir()
    target = cache / hashlib.sha1(_BLOB_URL.format(name=name).encode()).hexdigest()
    if target.exists():
        return
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(target)


@functools.cache
def tiktoken_encoding(name: str = "o200k_base") -> Any:
    """A tiktoken encoding by name, loaded offline for the encodings ``bpe-openai`` bundles.

    Args:
        name: ``"o200k_base"`` (GPT-4o and later), ``"cl100k_base"``, or any name tiktoken knows.
    """
    import tiktoken

    if name in _BUNDLED:
        _seed_cache(name)
    return tiktoken.get_encoding(name)
