"""Bootstrap of one sandboxed run: confine this process, then run the user's program in it.

Started by `pacore_agent.evaluation.sandbox` as ``python -I [-S] _sandbox_bootstrap.py CONFIG_JSON`` with the run's
private directory as cwd, the test input as stdin, in a new session. Self-contained (standard library
only), never imported by the library. In order:

1. read and compile the program (a syntax error is reported as the user's error, exit 1);
2. ``unshare(CLONE_NEWNET)``: a network namespace with no interface up, when permitted (root);
3. when the uid drop would leave the interpreter's standard library unreadable (e.g. a Python under a
   0700 /root), import the modules programs commonly use while they are still readable;
4. resource limits: CPU seconds, file size, open files, processes, no core dumps;
5. drop root: ``setgroups([])``, ``setgid``, ``setuid`` to the run's own unprivileged uid, so file
   permissions and RLIMIT_NPROC bind (they do not bind root);
6. the address-space limit (after the imports, so that they are not charged to the program);
7. last, an audit hook (PEP 578) that refuses sockets, process creation (fork/exec/spawn/subprocess),
   signals to other processes, ctypes, rlimit changes and any write outside the run directory;

then it reports which layers took effect on the status pipe and runs the program as ``__main__`` in a
thread with a large stack (deep recursion is common in contest code). Exit codes: the program's own (0,
1 for an uncaught exception), `EXIT_MEMORY` for MemoryError, `EXIT_BLOCKED` when the program died on a
refused operation, `EXIT_SETUP` when confinement itself failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import threading
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: every millisecond of start-up is paid per test
    from types import CodeType
    from typing import Any, NoReturn

EXIT_MEMORY = 251
EXIT_BLOCKED = 252
EXIT_SETUP = 253
_RESERVED_EXITS = (EXIT_MEMORY, EXIT_BLOCKED, EXIT_SETUP)

CLONE_NEWNET = 0x40000000

# fmt: off
PRELOAD = [
    "array", "abc", "base64", "bisect", "calendar", "cmath", "collections", "collections.abc",
    "contextlib", "copy", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools",
    "graphlib", "hashlib", "heapq", "io", "itertools", "json", "math", "numbers", "operator", "pickle",
    "pprint", "queue", "random", "re", "select", "selectors", "signal", "socket", "statistics", "string",
    "struct", "subprocess", "textwrap", "time", "traceback", "types", "typing", "unicodedata", "weakref",
    "shutil", "glob", "fnmatch", "tempfile", "pathlib", "contextvars",
]
# fmt: on
"""Standard-library modules imported before the uid drop when the uid could not read them afterwards
(``socket`` and ``subprocess`` too, so that using them meets the audit hook, not an import error)."""

_SPAWN_EVENTS = frozenset(
    {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.startfile"}
    | {"subprocess.Popen", "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill"}
)
_OTHER_BLOCKED_EVENTS = frozenset(
    {"sys.addaudithook", "resource.setrlimit", "resource.prlimit", "sys.remote_exec", "os.add_dll_directory"}
)
_ALWAYS_BLOCKED = _SPAWN_EVENTS | _OTHER_BLOCKED_EVENTS
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "_ctypes.", "webbrowser.", "http.client.", "urllib.")
_BLOCKED_IMPORTS = frozenset({"_posixsubprocess", "_ctypes", "ctypes"})
# event -> positions of its path arguments that must stay inside the run directory
_PATH_EVENTS = {
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
    "shutil.copyfile": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
    "shutil.make_archive": (0,),
    "shutil.unpack_archive": (1,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_WRITABLE_DEVICES = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/fd/1", "/dev/fd/2"})


class _Blocked(PermissionError):
    """A refused operation; the message names the audit event."""


_violations: list[str] = []
"""Every refusal so far; a program that dies after one is reported as blocked."""


def _refuse(event: str, detail: str = "") -> NoReturn:
    message = f"pacore sandbox: {event} is not allowed{': ' + detail if detail else ''}"
    _violations.append(message)
    raise _Blocked(message)


def _install_audit_hook(run_dir: str) -> None:
    root = os.path.realpath(run_dir)
    guard = threading.local()

    def inside(path: Any) -> bool:
        if isinstance(path, int):  # an open descriptor: it was checked when opened
            return True
        try:
            text = os.fsdecode(os.fspath(path))
        except TypeError:
            return False
        resolved = os.path.realpath(os.path.join(os.getcwd(), text))
        return resolved == root or resolved.startswith(root + os.sep) or resolved in _WRITABLE_DEVICES

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if getattr(guard, "busy", False):
            return
        guard.busy = True
        try:
            if event == "open":
                path, mode, flags = (*args, None, None, 0)[:3]
                writes = bool((flags or 0) & _WRITE_FLAGS) or any(c in (mode or "") for c in "wax+")
                if writes and not inside(path):
                    _refuse("open for writing", repr(path))
            elif event == "import":
                if args and args[0] in _BLOCKED_IMPORTS:
                    _refuse("import", str(args[0]))
            elif event in _ALWAYS_BLOCKED or event.startswith(_BLOCKED_PREFIXES):
                _refuse(event)
            elif event in _PATH_EVENTS:
                for position in _PATH_EVENTS[event]:
                    if position < len(args) and args[position] is not None and not inside(args[position]):
                        _refuse(event, repr(args[position]))
        finally:
            guard.busy = False

    sys.addaudithook(hook)


def _refuse_fork_exec(*args: Any, **kwargs: Any) -> NoReturn:
    # _posixsubprocess.fork_exec raises no audit event (3.11); multiprocessing calls it directly.
    _refuse("_posixsubprocess.fork_exec")


def _unshare_network() -> str:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return os.strerror(ctypes.get_errno())
    return ""


def _set_limit(which: int, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(which, (soft, soft if hard is None else hard))


def _run_user(code: CodeType, outcome: dict[str, Any]) -> None:
    namespace = {"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
        outcome["code"] = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            outcome["code"] = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            outcome["code"] = 1
        if outcome["code"] in _RESERVED_EXITS:
            outcome["code"] = 1
    except MemoryError:
        outcome["code"] = EXIT_MEMORY
        outcome["memory"] = True
    except BaseException as exc:
        # The traceback from the program's own frames on; even printing can fail under the memory limit.
        with contextlib.suppress(BaseException):
            traceback.print_exception(type(exc), exc, exc.__traceback__ and exc.__traceback__.tb_next)
        outcome["code"] = 1


def main() -> int:
    """Confine this process, run the program, return its exit code."""
    config: dict[str, Any] = json.loads(sys.argv[1])
    sys.path += [path for path in config.get("site_dirs", []) if path not in sys.path]
    status_fd: int = config["status_fd"]
    layers: list[str] = []
    degraded: list[str] = []
    try:
        with open(config["program"], encoding="utf-8", errors="replace") as handle:
            source = handle.read()
        try:
            code = compile(source, "solution.py", "exec")
        except (SyntaxError, ValueError):
            traceback.print_exc(limit=0)
            return 1

        if config["isolate_network"]:
            error = _unshare_network()
            (degraded if error else layers).append(f"network_namespace{': ' + error if error else ''}")

        for name in (PRELOAD if config["preload"] else []) + config["extra_modules"]:
            with contextlib.suppress(ImportError):
                __import__(name)
        if config["audit_hook"]:
            import _posixsubprocess

            _posixsubprocess.fork_exec = _refuse_fork_exec

        _set_limit(resource.RLIMIT_CORE, 0)
        cpu = int(config["cpu_seconds"])
        _set_limit(resource.RLIMIT_CPU, cpu, cpu + 1)
        _set_limit(resource.RLIMIT_FSIZE, int(config["file_size_bytes"]))
        _set_limit(resource.RLIMIT_NOFILE, int(config["open_files"]))
        _set_limit(resource.RLIMIT_NPROC, int(config["max_processes"]))
        layers += ["cpu_limit", "file_size_limit", "open_files_limit"]

        uid = config["uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError("setuid did not take effect")
            layers += ["unprivileged_uid", "process_limit"]
        elif os.geteuid() != 0:
            layers.append("process_limit")
        else:
            degraded.append("process_limit: RLIMIT_NPROC does not bind root")

        stack = int(config["stack_bytes"])
        _set_limit(resource.RLIMIT_AS, int(config["memory_bytes"]))
        layers.append("memory_limit")

        if config["audit_hook"]:  # last: it also refuses setrlimit
            _install_audit_hook(os.getcwd())
            layers.append("audit_hook")
    except Exception as exc:
        print(f"pacore sandbox: setup failed: {exc!r}", file=sys.stderr)
        return EXIT_SETUP

    try:
        os.write(status_fd, json.dumps({"layers": layers, "degraded": degraded}).encode())
    finally:
        os.close(status_fd)

    outcome: dict[str, Any] = {"code": 1}
    try:
        threading.stack_size(stack)
        runner = threading.Thread(target=_run_user, args=(code, outcome), name="solution")
        runner.start()
        runner.join()
    except (RuntimeError, ValueError, MemoryError):  # no room for the big stack: run on the main thread
        _run_user(code, outcome)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if outcome["code"] == 1 and _violations:
        return EXIT_BLOCKED
    return int(outcome["code"])


if __name__ == "__main__":
    # os._exit: no waiting for threads the program left running, no second flush of a broken pipe.
    os._exit(main())
