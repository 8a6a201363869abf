"""ARCHITECTURE.md names only modules that exist: every dotted module path it quotes imports."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pacore_agent", "training", "benchmarks")
# Optional heavy dependencies a module may need; such a module must still be found, so only its
# third-party import is allowed to fail, never the module itself.
OPTIONAL = {"verl", "ray", "omegaconf", "hydra"}


def _named_modules() -> list[str]:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    pattern = "`((?:" + "|".join(PACKAGES) + r")(?:\.[a-z_][a-z0-9_]*)*)`"
    names = set(re.findall(pattern, text))
    return sorted(names)


def test_architecture_names_modules() -> None:
    names = _named_modules()
    assert "pacore_agent.coordinator" in names
    assert len(names) > 40


@pytest.mark.parametrize("name", _named_modules())
def test_named_module_imports(name: str) -> None:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        assert missing in OPTIONAL, f"ARCHITECTURE.md names {name}, which does not import: {error}"


def test_readme_links_architecture_not_outside() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "ARCHITECTURE.md" in readme
    assert "shared/docs" not in readme


def test_the_library_runs_without_the_openai_sdk() -> None:
    # The SDK is a test and benchmark dependency only: OpenAIBackend speaks HTTP itself.
    script = (
        "import sys\n"
        "sys.modules['openai'] = None  # any import of it now fails\n"
        "import anyio\n"
        "from pacore_agent import Coordinator, OpenAIBackend, SimConfig, SimServer, Single\n"
        "from pacore_agent.serving.server import PacoreServer\n"
        "async def main():\n"
        "    async with SimServer(SimConfig(seed=1)) as sim, OpenAIBackend(sim.base_url) as backend:\n"
        "        result = await Coordinator([4, 2], backend).solve('What is 6*7?')\n"
        "        single = await Single(backend).solve('What is 6*7?')\n"
        "        PacoreServer(backend, port=0)\n"
        "    print(result.calls, single.calls)\n"
        "anyio.run(main)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "1"]
