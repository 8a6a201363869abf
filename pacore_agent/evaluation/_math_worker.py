"""Child process behind `pacore_agent.evaluation.answers.math_equal`: math-verify parse + verify, one pair at a time.

Run as a script (``python -P -u _math_worker.py``), never imported by the library, and self-contained so
that it needs nothing from pacore on ``sys.path``. The protocol is JSON lines:

- on start, after importing math-verify and warming it up, it writes ``{"ready": true}``; when that
  fails (math-verify missing or broken) it writes ``{"ready": false, "error": "..."}`` and exits 1;
- for each request ``{"id", "candidate", "reference", "timeout"}`` it writes
  ``{"id", "status": "ok", "equal": bool}``, or ``{"id", "status": "timeout" | "error", "error": "..."}``.
  A failure is reported as such, never as ``"equal": false``: the parent must not read a broken grader
  as a wrong answer.

Why a process: math-verify's own timeouts use ``signal.alarm`` and work only in the main thread, and some
inputs (towers of powers, huge factorials) keep sympy busy for minutes, sometimes inside C code that holds
the GIL. Here the worker's main thread arms its own ``SIGALRM`` for the whole parse + verify; whatever
that cannot interrupt, the parent ends by killing this process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any


class _Deadline(BaseException):
    """Raised by the alarm; a BaseException so that math-verify's ``except Exception`` cannot swallow it."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _Deadline


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _check(candidate: str, reference: str, timeout: float) -> dict[str, Any]:
    from math_verify import parse, verify

    signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.01))
    try:
        try:
            gold = parse(reference, parsing_timeout=None)
            pred = parse(candidate, parsing_timeout=None)
            return {"status": "ok", "equal": bool(gold and pred and verify(gold, pred, timeout_seconds=None))}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Deadline:
        return {"status": "timeout", "error": f"math-verify took longer than {timeout:g} s"}
    except Exception as exc:
        return {"status": "error", "error": f"math-verify raised {_describe(exc)}"}


def main() -> int:
    """Serve requests from stdin until it closes."""
    logging.disable(logging.CRITICAL)  # math-verify logs a warning for every disabled timeout and parse miss
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the protocol's own handle: a stray print()
    sys.stdout = sys.stderr  # from a library cannot corrupt it
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        warm = _check("1", "1", 60.0)  # import sympy and build the parsers before saying ready
        if warm != {"status": "ok", "equal": True}:
            raise RuntimeError(f"math-verify fails its self-check (1 == 1): {warm}")
    except BaseException as exc:  # ImportError included: say why, so the parent can stop with it
        out.write(json.dumps({"ready": False, "error": _describe(exc)}) + "\n")
        out.flush()
        return 1
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        request_id = None
        try:
            request: dict[str, Any] = json.loads(line)
            request_id = request.get("id")
            reply = _check(str(request["candidate"]), str(request["reference"]), request["timeout"])
        except _Deadline:  # an alarm that fired between two statements
            reply = {"status": "timeout", "error": "math-verify ran out of time"}
        except Exception as exc:
            reply = {"status": "error", "error": f"bad request: {_describe(exc)}"}
        reply["id"] = request_id
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
