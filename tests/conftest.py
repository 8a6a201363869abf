"""Shared fixtures: the asyncio backend for anyio tests, a guard against real network access, one torch thread."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

_ENV_VARS = (
    "PACORE_BASE_URL",
    "PACORE_API_KEY",
    "PACORE_MODEL",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_MODEL",
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _is_local(address: Any) -> bool:
    if isinstance(address, tuple) and address:
        host = address[0]
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return True  # AF_UNIX paths and the like


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never reach the network: only loopback connections are allowed, and no endpoint
    configuration leaks in from the developer's environment."""
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if not _is_local(address):
            raise OSError(f"tests must stay offline: refused a connection to {address!r}")
        return original_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
        if not _is_local(address):
            raise OSError(f"tests must stay offline: refused a connection to {address!r}")
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    yield


def find_shared() -> Any:
    """The steering repository's ``shared/`` folder (docs and benchmark data), found upward from here.

    ``PACORE_SHARED_DIR`` overrides the search.
    """
    import os
    from pathlib import Path

    override = os.environ.get("PACORE_SHARED_DIR")
    if override:
        return Path(override)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared"
        if (candidate / "docs" / "synthesis_template.txt").exists():
            return candidate
    raise RuntimeError("cannot find the shared/ folder beside the repository; set PACORE_SHARED_DIR")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one CPU thread for the test: the tiny models run fastest so, above all on shared cores.

    Test files of tiny models take it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch  # here, so that test files without torch do not pay for importing it

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_dir() -> Any:
    return find_shared()
