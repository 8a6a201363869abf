"""The math-verify worker processes behind `pacore_agent.evaluation.answers.math_verdict`.

math-verify's timeouts rely on ``signal.alarm`` (main thread only) and some inputs keep sympy busy for
minutes, so parse + verify runs in small persistent worker processes (`_math_worker.py`) with a per-call
deadline: on timeout the worker is killed and restarted on the next call. Every call says how it ended
(``"equal"``, ``"different"``, ``"timeout"`` or ``"error"`` with the reason), so a grader that failed is
never mistaken for a wrong answer; a worker that cannot start at all raises `GraderUnavailableError`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal

from pacore_agent.exceptions import PacoreRuntimeError

__all__ = ["GraderUnavailableError", "Outcome"]

Outcome = Literal["equal", "different", "timeout", "error"]

_WORKER_SCRIPT = Path(__file__).with_name("_math_worker.py")
_WORKER_STARTUP_TIMEOUT = 120.0
"""Seconds a fresh worker may take to import sympy and math-verify (not charged to any call's timeout)."""
_KILL_GRACE = 0.5
"""Extra seconds the parent waits past a call's timeout for the worker's own alarm before killing it."""
_MAX_WORKERS = max(1, int(os.environ.get("PACORE_MATH_WORKERS", "2")))


class GraderUnavailableError(PacoreRuntimeError):
    """The math grader cannot run at all (math-verify missing or broken, the worker cannot start).

    Grading cannot go on: every answer would otherwise read as wrong. Install or repair math-verify
    (``pip install 'math-verify[antlr4_13_2]'``) and rerun.
    """


class _MathWorker:
    """One worker process and its line-buffered pipe; used by one thread at a time (the pool ensures it)."""

    def __init__(self) -> None:
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-u", str(_WORKER_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own group: killing it never touches ours
            )
        except OSError as exc:
            raise GraderUnavailableError(f"the math-verify worker could not be started: {exc}") from exc
        self._buffer = b""
        self._next_id = 0
        self._eof = False
        line = self._read_line(time.monotonic() + _WORKER_STARTUP_TIMEOUT)
        try:
            ready = json.loads(line) if line is not None else {}
        except ValueError:
            ready = {}
        if not isinstance(ready, dict) or ready.get("ready") is not True:
            self.kill()
            why = ready.get("error") if isinstance(ready, dict) else None
            if why is None:
                why = (
                    f"it exited with code {self._proc.returncode}"
                    if self._eof
                    else f"no answer within {_WORKER_STARTUP_TIMEOUT:.0f} s"
                )
            raise GraderUnavailableError(
                f"the math-verify worker did not start ({why}); install or repair math-verify: "
                "pip install 'math-verify[antlr4_13_2]'"
            )

    def _read_line(self, deadline: float) -> bytes | None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # the worker died
                self._eof = True
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def check(self, candidate: str, reference: str, timeout: float) -> tuple[Outcome, str | None]:
        """Ask the worker: the outcome and, for ``"error"`` and ``"timeout"``, why.

        A worker that died, stopped answering or broke the protocol is killed (the pool replaces it).
        """
        assert self._proc.stdin is not None
        self._next_id += 1
        request = {"id": self._next_id, "candidate": candidate, "reference": reference, "timeout": timeout}
        try:
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
        except OSError as exc:
            self.kill()
            return "error", f"the math-verify worker is gone ({exc})"
        line = self._read_line(time.monotonic() + timeout + _KILL_GRACE)
        if line is None:
            died = self._eof
            self.kill()
            if died:
                return "error", f"the math-verify worker died (exit code {self._proc.returncode})"
            return "timeout", f"math-verify took longer than {timeout:g} s"
        try:
            reply = json.loads(line)
        except ValueError:
            reply = {}
        status = reply.get("status") if isinstance(reply, dict) else None
        if reply.get("id") != self._next_id or status not in ("ok", "timeout", "error"):
            self.kill()
            return "error", "the math-verify worker broke its protocol"
        if status == "ok":
            return ("equal" if reply.get("equal") else "different"), None
        # "timeout" or "error" inside math-verify: the worker survived, keep it.
        default = (
            f"math-verify took longer than {timeout:g} s" if status == "timeout" else "math-verify raised"
        )
        return status, str(reply.get("error") or default)

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self._proc.poll() is None

    def kill(self) -> None:
        """Kill the worker's process group and reap it."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class _WorkerPool:
    """Up to `_MAX_WORKERS` lazily started workers shared by all threads of this process."""

    def __init__(self, max_workers: int) -> None:
        self._max = max_workers
        self._idle: list[_MathWorker] = []
        self._count = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked child: the parent's workers are not ours to use
            self._idle, self._count, self._pid = [], 0, os.getpid()

    def check(self, candidate: str, reference: str, timeout: float) -> tuple[Outcome, str | None]:
        """`_MathWorker.check` on an idle (or fresh) worker.

        Raises:
            GraderUnavailableError: No worker can be started.
        """
        with self._cond:
            self._check_fork()
            while not self._idle and self._count >= self._max:
                self._cond.wait()
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                self._count += 1
        try:
            if worker is None:
                worker = _MathWorker()
            outcome = worker.check(candidate, reference, timeout)
        except BaseException:
            if worker is not None:
                worker.kill()
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            if worker.alive:
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()
        return outcome

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for worker in idle:
            worker.kill()


_POOL = _WorkerPool(_MAX_WORKERS)
atexit.register(_POOL.close)
