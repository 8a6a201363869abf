"""The code sandbox's limits (`SandboxConfig`) and what it reports (`Verdict`, `TestVerdict`, `CodeTestResult`).

The runner itself, and the layers these limits drive, are in `pacore_agent.evaluation.sandbox`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pacore_agent.exceptions import UsageError

__all__ = ["CodeTestResult", "SandboxConfig", "TestVerdict", "Verdict"]


class Verdict(enum.StrEnum):
    """The outcome of one test."""

    PASSED = "passed"
    FAILED = "failed"
    """Ran to completion but printed the wrong output."""
    TIMEOUT = "timeout"
    """Over the wall-clock or the CPU limit."""
    RUNTIME_ERROR = "runtime_error"
    MEMORY = "memory"
    OUTPUT_LIMIT = "output_limit"
    """Printed more than the output cap (or wrote a file over the size limit)."""
    BLOCKED = "blocked"
    """Died on an operation the sandbox refuses (socket, fork, write outside its directory ...)."""
    INVALID_TEST = "invalid_test"
    """The test itself is unusable (no expected output, not a stdin test); excluded from the pass rate."""
    NO_PROGRAM = "no_program"
    SKIPPED = "skipped"
    """Not run: the overall time cap was spent, or the run was cancelled."""
    SANDBOX_ERROR = "sandbox_error"
    """The sandbox itself failed (interpreter missing, confinement refused)."""


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Limits and layers of the code sandbox. Defaults suit contest problems (LiveCodeBench, AtCoder).

    Attributes:
        timeout_s: Wall-clock limit of one test, seconds.
        cpu_time_s: CPU-time limit of one test (RLIMIT_CPU, rounded up to whole seconds); default:
            ``timeout_s``.
        memory_bytes: Address-space limit (RLIMIT_AS) of the program's process.
        output_bytes: Most bytes read from stdout, and separately from stderr, before the run is stopped.
        file_size_bytes: Largest file the program may write (RLIMIT_FSIZE).
        max_processes: RLIMIT_NPROC for the run's uid (binds only after the uid drop, or for non-root).
        open_files: RLIMIT_NOFILE.
        stack_bytes: Stack of the thread that runs the program (deep recursion); capped to a quarter of
            ``memory_bytes``.
        total_timeout_s: Cap on all tests of one program together; tests past it are ``skipped``.
        excerpt_chars: Characters of stdout/stderr kept in each verdict.
        drop_privileges: When running as root, run the program under its own unprivileged uid.
        isolate_network: Put the program in a new network namespace (when permitted).
        audit_hook: Install the audit hook (see the module docstring).
        python: Interpreter for the program; default: the current one.
        preload_modules: Extra modules (e.g. ``("numpy",)``) imported before the uid drop, for when the
            interpreter's files are not readable by the sandbox uid; each costs start-up time per test.
        tmp_dir: Where the per-run directories are created; default: the system temp directory.
    """

    timeout_s: float = 6.0
    cpu_time_s: float | None = None
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20
    file_size_bytes: int = 16 << 20
    max_processes: int = 16
    open_files: int = 64
    stack_bytes: int = 256 << 20
    total_timeout_s: float = 60.0
    excerpt_chars: int = 2000
    drop_privileges: bool = True
    isolate_network: bool = True
    audit_hook: bool = True
    python: str | None = None
    preload_modules: tuple[str, ...] = ()
    tmp_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("timeout_s", "total_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"SandboxConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.cpu_time_s is not None and not self.cpu_time_s > 0:
            raise UsageError(f"SandboxConfig.cpu_time_s must be > 0 or None, got {self.cpu_time_s!r}")
        minimums = {"memory_bytes": 32 << 20, "output_bytes": 1, "file_size_bytes": 1, "max_processes": 1}
        minimums |= {"open_files": 16, "stack_bytes": 1 << 20, "excerpt_chars": 0}
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise UsageError(f"SandboxConfig.{name} must be >= {minimum}, got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True)
class TestVerdict:
    """The outcome of one test.

    Attributes:
        index: Position of the test in the list given.
        verdict: What happened.
        wall_time_s: Seconds from start to the end of the run (0 for tests not run).
        stdout: The start of what the program printed (at most `SandboxConfig.excerpt_chars`).
        stderr: The start of its stderr (tracebacks, the sandbox's refusal message).
        returncode: The process's exit status (negative: killed by that signal); None if not run.
        detail: A short explanation (which limit, which refused operation, why the test is invalid).
    """

    __test__ = False  # not a pytest test class, despite the name

    index: int
    verdict: Verdict
    wall_time_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        """Whether the program printed the expected output."""
        return self.verdict is Verdict.PASSED


@dataclass(frozen=True, slots=True)
class CodeTestResult:
    """All tests of one program.

    Attributes:
        verdicts: One per test, in order.
        layers: Sandbox layers that took effect in at least one run.
        degraded: Layers that were asked for but not available, with the reason.
        error: Why nothing could be graded (no program, no tests), else None.
    """

    verdicts: tuple[TestVerdict, ...]
    layers: tuple[str, ...] = ()
    degraded: tuple[str, ...] = ()
    error: str | None = None

    @property
    def valid_tests(self) -> int:
        """Tests that count toward the pass rate (all but ``invalid_test`` ones)."""
        return sum(1 for v in self.verdicts if v.verdict is not Verdict.INVALID_TEST)

    @property
    def passed(self) -> int:
        """Tests passed."""
        return sum(1 for v in self.verdicts if v.passed)

    @property
    def pass_rate(self) -> float:
        """Passed / valid tests, in [0, 1]: the paper's code reward (0.0 when no test is valid)."""
        return self.passed / self.valid_tests if self.valid_tests else 0.0

    @property
    def all_passed(self) -> bool:
        """Whether there was at least one valid test and every valid test passed."""
        return self.valid_tests > 0 and self.passed == self.valid_tests

    @property
    def wall_time_s(self) -> float:
        """Seconds spent running tests."""
        return sum(v.wall_time_s for v in self.verdicts)
