"""Code grading: run a Python program on stdin/stdout tests inside a sandbox; the pass rate is the reward.

Each test runs in a fresh process, in a fresh private directory that is removed afterwards. Protection is
layered; every layer degrades gracefully where the machine does not allow it, and `CodeTestResult.layers`
/ ``.degraded`` say which ones took effect:

======================  =======================================================================  ===========
layer                   protects against                                                         needs
======================  =======================================================================  ===========
``private_directory``   leftovers between runs, reading another run's files                      (always)
``wall_clock_limit``    sleeping or blocking forever                                             (always)
``output_cap``          printing without end (at most `SandboxConfig.output_bytes` read)         (always)
``process_group_kill``  children left running (new session; ``killpg`` at the end)               (always)
``leftover_scan``       processes still alive after that: /proc scan by session id and, with     Linux /proc
                        the uid drop, by the run's own uid (finds those that called ``setsid``)
``cpu_limit``           busy loops (RLIMIT_CPU -> SIGXCPU)                                       (always)
``memory_limit``        huge allocations (RLIMIT_AS -> MemoryError)                              (always)
``file_size_limit``     filling the disk (RLIMIT_FSIZE)                                          (always)
``open_files_limit``    descriptor exhaustion (RLIMIT_NOFILE)                                    (always)
``unprivileged_uid``    writing root-owned files, signalling other processes; makes the process  root
                        limit bind. Each run gets its own uid from a mapped range.
``process_limit``       fork bombs (RLIMIT_NPROC; does not bind root, hence the uid drop)        non-root
``network_namespace``   any network use, loopback included: ``unshare(CLONE_NEWNET)``            root
``audit_hook``          sockets, fork/exec/spawn/subprocess, ctypes, kill, rlimit changes,       (always)
                        writes outside the run directory (Python audit hook, PEP 578)
======================  =======================================================================  ===========

The audit hook stops honest mistakes and careless code; it is not a boundary against a program written
to escape (the OS layers are). Known limits: reading files outside the directory is allowed; with the
uid drop, modules the interpreter cannot read as that uid (e.g. a Python under a 0700 ``/root``) import
only if the bootstrap preloaded them (common standard-library modules are; add others with
`SandboxConfig.preload_modules`). Packages that need a ``.pth`` file are not importable (the bootstrap
starts with ``-S`` and adds site-packages itself).

`run_code_tests` is synchronous and blocks for at most `SandboxConfig.total_timeout_s` (plus cleanup);
`arun_code_tests` runs it in a worker thread and stops the current test promptly when cancelled.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import math
import os
import random
import re
import selectors
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread

from pacore_agent.evaluation.extraction import extract_program
from pacore_agent.evaluation.sandbox_config import CodeTestResult, SandboxConfig, TestVerdict, Verdict

__all__ = [
    "CodeTestResult",
    "SandboxConfig",
    "TestVerdict",
    "Verdict",
    "arun_code_tests",
    "extract_program",
    "grade_code",
    "run_code_tests",
]

_BOOTSTRAP = Path(__file__).with_name("_sandbox_bootstrap.py")
# Exit codes of the bootstrap (kept in step with _sandbox_bootstrap.py, which cannot import this module).
_EXIT_MEMORY = 251
_EXIT_BLOCKED = 252
_EXIT_SETUP = 253

_UID_POOL = (1_000_000, 2_000_000)
"""Preferred uids for runs: far above any account a system creates."""
_UID_FALLBACK_POOL = (20_000, 60_000)
"""Used when the user namespace maps only the usual 0-65535 (rootless containers)."""
_NOBODY = 65534
_EXIT_GRACE = 0.2
"""Seconds to wait for pipes to close after the program exits (a child may still hold them)."""


# ---------------------------------------------------------------------------------------------------------
# One sandboxed run
# ---------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    returncode: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    wall_time_s: float = 0.0
    stopped: str | None = None  # "timeout", "output_limit", "cancelled"
    spawn_error: str | None = None
    layers: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)


_active_groups: set[int] = set()
_active_uids: set[int] = set()
_registry_lock = threading.Lock()


@atexit.register
def _kill_active_groups() -> None:
    """At interpreter exit, kill the runs still going (e.g. in an abandoned worker thread)."""
    with _registry_lock:
        groups = list(_active_groups)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


@functools.cache
def _uid_pool() -> tuple[int, int] | None:
    """A range of uids that all exist in this user namespace (so setuid to each can succeed)."""
    try:
        with open("/proc/self/uid_map") as handle:
            mapped = [tuple(int(x) for x in line.split()) for line in handle if line.strip()]
    except (OSError, ValueError):
        return None
    for low, high in (_UID_POOL, _UID_FALLBACK_POOL):
        if any(inside <= low and high <= inside + count for inside, _outside, count in mapped):
            return low, high
    return None


def _pick_uid(config: SandboxConfig, degraded: list[str]) -> tuple[int | None, bool]:
    """(uid to run as or None, whether it is unique to this run)."""
    if not config.drop_privileges:
        return None, False
    if os.geteuid() != 0:
        degraded.append("unprivileged_uid: not running as root; the program runs as the caller")
        return None, False
    pool = _uid_pool()
    if pool is not None:
        # Unique among this process's runs; across processes a clash is as unlikely as the pool is large.
        with _registry_lock:
            while (uid := random.randrange(*pool)) in _active_uids:
                pass
            _active_uids.add(uid)
        return uid, True
    degraded.append("unprivileged_uid: no free uid range is mapped here; running as nobody")
    return _NOBODY, False


@functools.cache
def _site_dirs() -> list[str]:
    """This interpreter's site-packages directories (a venv's included)."""
    return [path for path in site.getsitepackages() if os.path.isdir(path)]


@functools.cache
def _stdlib_readable_by_others() -> bool:
    """Whether any uid can read this interpreter's standard library (every ancestor searchable)."""
    directory = Path(os.__file__).resolve().parent
    try:
        if not os.stat(directory).st_mode & 0o004:
            return False
        return all(os.stat(path).st_mode & 0o001 for path in (directory, *directory.parents))
    except OSError:
        return False


def _proc_entries() -> list[tuple[int, str, int, int, Path]]:
    """(pid, state, pgrp, session, path) of every process, from /proc."""
    entries = []
    for path in Path("/proc").iterdir():
        if not path.name.isdigit():
            continue
        try:
            stat = (path / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        entries.append((int(path.name), fields[0], int(fields[2]), int(fields[3]), path))
    return entries


def _real_uid(path: Path) -> int | None:
    try:
        for line in (path / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _kill_leftovers(session: int, uid: int | None) -> bool:
    """SIGKILL every live process of the run (its session or, if unique, its uid) until none is left.

    Returns:
        False when /proc is not available (the scan degraded), else True.
    """
    if not Path("/proc/self/stat").exists():
        return False
    for _ in range(200):
        victims = [
            pid
            for pid, state, pgrp, sid, path in _proc_entries()
            if state != "Z"
            and pid != os.getpid()
            and (session in (sid, pgrp) or (uid is not None and _real_uid(path) == uid))
        ]
        if not victims:
            return True
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    return True


def _sandbox_env(run_dir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": run_dir,
        "TMPDIR": run_dir,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _pump(
    proc: subprocess.Popen[bytes], run: _Run, deadline: float, cap: int, cancel: threading.Event | None
) -> None:
    """Read stdout/stderr until the program ends, the deadline passes, output exceeds the cap, or cancel.

    The program has ended when both pipes are closed and it has exited, or when it has exited and a
    child it left behind still holds the pipes (then after a short grace).
    """
    assert proc.stdout is not None and proc.stderr is not None
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                run.stopped = "timeout"
                break
            if cancel is not None and cancel.is_set():
                run.stopped = "cancelled"
                break
            if proc.poll() is not None:
                exited_at = exited_at or now
                if not selector.get_map() or now - exited_at > _EXIT_GRACE:  # a child may hold the pipes
                    break
            elif not selector.get_map():  # it closed its output but runs on
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=min(0.05, deadline - now))
                continue
            for key, _ in selector.select(timeout=min(0.05, deadline - now)):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    continue
                buffer = buffers[fd]
                buffer += chunk[: max(cap - len(buffer), 0)]
                if len(buffer) >= cap:
                    run.stopped = "output_limit"
            if run.stopped:
                break
    run.stdout = bytes(buffers[proc.stdout.fileno()])
    run.stderr = bytes(buffers[proc.stderr.fileno()])


def _run_once(
    program: str, stdin_data: str, config: SandboxConfig, timeout_s: float, cancel: threading.Event | None
) -> _Run:
    """Run ``program`` once in a fresh sandbox; always cleans up (processes, directory, uid)."""
    run = _Run()
    uid, uid_unique = _pick_uid(config, run.degraded)
    run_dir: str | None = None
    status_r, status_w = os.pipe()
    try:
        run_dir = tempfile.mkdtemp(prefix="pacore-sandbox-", dir=config.tmp_dir)
        program_path = os.path.join(run_dir, "solution.py")
        with open(program_path, "w", encoding="utf-8", errors="replace") as handle:
            handle.write(program)
        if uid is not None:
            os.chown(run_dir, uid, uid)
            os.chown(program_path, uid, uid)
        cpu = math.ceil(config.cpu_time_s or config.timeout_s)
        bootstrap_config = {
            "program": program_path,
            "status_fd": status_w,
            "uid": uid,
            "isolate_network": config.isolate_network,
            "audit_hook": config.audit_hook,
            "cpu_seconds": cpu,
            "memory_bytes": config.memory_bytes,
            "file_size_bytes": config.file_size_bytes,
            "open_files": config.open_files,
            "max_processes": config.max_processes,
            "stack_bytes": min(config.stack_bytes, config.memory_bytes // 4),
            "extra_modules": list(config.preload_modules),
            "preload": uid is not None and (config.python is not None or not _stdlib_readable_by_others()),
        }
        if config.python is None:
            # -S skips site's .pth processing (editable installs make it ~100 ms per run); the
            # bootstrap puts this interpreter's site-packages on sys.path itself.
            bootstrap_config["site_dirs"] = _site_dirs()
            command = [sys.executable, "-I", "-S", str(_BOOTSTRAP), json.dumps(bootstrap_config)]
        else:
            command = [config.python, "-I", str(_BOOTSTRAP), json.dumps(bootstrap_config)]
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin_data.encode("utf-8", errors="replace"))
            stdin_file.seek(0)
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=stdin_file,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=run_dir,
                    env=_sandbox_env(run_dir),
                    start_new_session=True,
                    pass_fds=(status_w,),
                )
            except OSError as exc:
                run.spawn_error = f"could not start the interpreter: {exc}"
                return run
        with _registry_lock:
            _active_groups.add(proc.pid)
        os.close(status_w)
        status_w = -1
        try:
            _pump(proc, run, start + timeout_s, config.output_bytes, cancel)
        finally:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            run.returncode = proc.wait()
            run.wall_time_s = time.monotonic() - start
            scanned = _kill_leftovers(proc.pid, uid if uid_unique else None)
            with _registry_lock:
                _active_groups.discard(proc.pid)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        run.layers += ["private_directory", "wall_clock_limit", "output_cap", "process_group_kill"]
        if scanned:
            run.layers.append("leftover_scan")
        else:
            run.degraded.append("leftover_scan: /proc is not available")
        os.set_blocking(status_r, False)
        with contextlib.suppress(OSError, ValueError):
            status = json.loads(os.read(status_r, 65536) or b"{}")
            run.layers += status.get("layers", [])
            run.degraded += status.get("degraded", [])
        return run
    finally:
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
        if uid_unique and uid is not None:
            with _registry_lock:
                _active_uids.discard(uid)


# ---------------------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------------------


def _output_lines(text: str) -> list[str]:
    """Lines with trailing whitespace stripped and trailing blank lines dropped."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _refusal(stderr: str) -> str:
    refusals = re.findall(r"pacore sandbox: [^\n]*", stderr)
    return refusals[-1] if refusals else "refused by the sandbox"


def _classify(run: _Run, expected: str, config: SandboxConfig, timeout_s: float) -> tuple[Verdict, str]:
    stderr = run.stderr.decode("utf-8", errors="replace")
    rc = run.returncode
    if run.spawn_error:
        return Verdict.SANDBOX_ERROR, run.spawn_error
    if run.stopped == "cancelled":
        return Verdict.SKIPPED, "cancelled"
    if run.stopped == "output_limit":
        return Verdict.OUTPUT_LIMIT, f"more than {config.output_bytes} bytes of output"
    if run.stopped == "timeout":
        return Verdict.TIMEOUT, f"wall-clock limit of {timeout_s:g} s"
    if rc == -signal.SIGXCPU:
        return Verdict.TIMEOUT, "CPU-time limit (SIGXCPU)"
    if rc == -signal.SIGXFSZ or (rc != 0 and "[Errno 27] File too large" in stderr):
        return Verdict.OUTPUT_LIMIT, f"file size limit of {config.file_size_bytes} bytes"
    if rc == _EXIT_MEMORY or (rc != 0 and re.search(r"\bMemoryError\b|Cannot allocate memory", stderr)):
        return Verdict.MEMORY, f"memory limit of {config.memory_bytes} bytes"
    if rc == _EXIT_BLOCKED:
        return Verdict.BLOCKED, _refusal(stderr)
    if rc == _EXIT_SETUP:
        return Verdict.SANDBOX_ERROR, stderr.strip()[-500:]
    if rc is not None and rc < 0:
        return Verdict.RUNTIME_ERROR, f"killed by {signal.Signals(-rc).name}"
    if rc != 0:
        last = stderr.strip().splitlines()[-1:] or [f"exit status {rc}"]
        return Verdict.RUNTIME_ERROR, last[0][:500]
    if _output_lines(run.stdout.decode("utf-8", errors="replace")) == _output_lines(expected):
        return Verdict.PASSED, ""
    return Verdict.FAILED, "wrong output"


def _invalid_reason(test: object) -> str | None:
    if not isinstance(test, Mapping):
        return f"a test must be a mapping, got {type(test).__name__}"
    if not isinstance(test.get("output"), str):
        return "the test has no expected output"
    if not isinstance(test.get("input", ""), str):
        return "the test input is not a string"
    if test.get("testtype", "stdin") != "stdin":
        return f"only stdin tests are supported, not {test.get('testtype')!r}"
    return None


def _run_code_tests(
    program: object, tests: object, config: SandboxConfig, cancel: threading.Event | None
) -> CodeTestResult:
    if not isinstance(tests, Sequence) or isinstance(tests, str | bytes):
        return CodeTestResult(verdicts=(), error=f"tests must be a list, got {type(tests).__name__}")
    if not tests:
        return CodeTestResult(verdicts=(), error="no tests")
    if not isinstance(program, str) or not program.strip():
        verdicts = tuple(
            TestVerdict(
                i, Verdict.INVALID_TEST if _invalid_reason(t) else Verdict.NO_PROGRAM, detail="no program"
            )
            for i, t in enumerate(tests)
        )
        return CodeTestResult(verdicts=verdicts, error="no program to run")
    verdicts_list: list[TestVerdict] = []
    layers: dict[str, None] = {}
    degraded: dict[str, None] = {}
    start = time.monotonic()
    excerpt = config.excerpt_chars
    for index, test in enumerate(tests):
        reason = _invalid_reason(test)
        if reason is not None:
            verdicts_list.append(TestVerdict(index, Verdict.INVALID_TEST, detail=reason))
            continue
        assert isinstance(test, Mapping)
        remaining = config.total_timeout_s - (time.monotonic() - start)
        if remaining < 0.05 or (cancel is not None and cancel.is_set()):
            why = "cancelled" if cancel is not None and cancel.is_set() else "overall time cap spent"
            verdicts_list.append(TestVerdict(index, Verdict.SKIPPED, detail=why))
            continue
        timeout_s = min(config.timeout_s, remaining)
        try:
            run = _run_once(program, test.get("input", ""), config, timeout_s, cancel)
        except (
            OSError,
            subprocess.SubprocessError,
        ) as exc:  # temp dir, pipes, chown: the host, not the program
            run = _Run(spawn_error=f"sandbox set-up failed: {exc}")
        verdict, detail = _classify(run, test["output"], config, timeout_s)
        layers.update(dict.fromkeys(run.layers))
        degraded.update(dict.fromkeys(run.degraded))
        verdicts_list.append(
            TestVerdict(
                index=index,
                verdict=verdict,
                wall_time_s=run.wall_time_s,
                stdout=run.stdout[: excerpt * 4].decode("utf-8", errors="replace")[:excerpt],
                stderr=run.stderr[-excerpt * 4 :].decode("utf-8", errors="replace")[-excerpt:]
                if excerpt
                else "",
                returncode=run.returncode,
                detail=detail,
            )
        )
    return CodeTestResult(verdicts=tuple(verdicts_list), layers=tuple(layers), degraded=tuple(degraded))


def run_code_tests(
    program: str | None, tests: Sequence[Mapping[str, Any]], config: SandboxConfig | None = None
) -> CodeTestResult:
    """Run a Python program on stdin/stdout tests, one sandboxed process per test, one test at a time.

    Output is compared line by line after stripping trailing whitespace and trailing blank lines.

    Args:
        program: Python source code.
        tests: ``{"input": str, "output": str, "testtype": "stdin"}`` mappings (LiveCodeBench format).
        config: Limits and layers; default `SandboxConfig()`.

    Returns:
        Per-test verdicts and the pass rate. Bad input never raises: a missing program gives
        ``no_program`` verdicts, a test without expected output ``invalid_test``.
    """
    return _run_code_tests(program, tests, config or SandboxConfig(), None)


async def arun_code_tests(
    program: str | None, tests: Sequence[Mapping[str, Any]], config: SandboxConfig | None = None
) -> CodeTestResult:
    """`run_code_tests` in a worker thread; the event loop keeps running meanwhile.

    On cancellation the await returns at once and the test in flight is stopped and cleaned up within
    a fraction of a second.

    Args:
        program: Python source code.
        tests: ``{"input", "output", "testtype"}`` mappings.
        config: Limits and layers; default `SandboxConfig()`.

    Returns:
        The same as `run_code_tests`.
    """
    cancel = threading.Event()
    call = functools.partial(_run_code_tests, program, tests, config or SandboxConfig(), cancel)
    try:
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    finally:
        cancel.set()


def grade_code(
    conclusion: str | None, tests: Sequence[Mapping[str, Any]], config: SandboxConfig | None = None
) -> CodeTestResult:
    """The paper's code reward for a conclusion: `extract_program`, then `run_code_tests`.

    Args:
        conclusion: A model's conclusion with a fenced Python block.
        tests: ``{"input", "output", "testtype"}`` mappings.
        config: Limits and layers; default `SandboxConfig()`.

    Returns:
        The test result; ``no_program`` verdicts (pass rate 0) when the conclusion holds no program.
    """
    result = run_code_tests(extract_program(conclusion), tests, config)
    if result.error == "no program to run":
        return CodeTestResult(result.verdicts, error="no Python code block in the conclusion")
    return result
