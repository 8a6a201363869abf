"""Test doubles and helpers that ship with the package: fake servers, tiny offline models.

They are labelled as test doubles in everything they return; nothing here is a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacore_agent.testing.fake_sglang import FakeSGLangServer

__all__ = ["FakeSGLangServer"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `python -m pacore_agent.testing.fake_sglang` must not find its own module
    # already imported by this package (runpy warns about that).
    if name == "FakeSGLangServer":
        from pacore_agent.testing.fake_sglang import FakeSGLangServer

        return FakeSGLangServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
