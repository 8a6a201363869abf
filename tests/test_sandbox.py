"""Code grading in the sandbox: each protection is shown to stop a hostile program, and the reward is right.

Every protection test names, in its docstring, the layer it checks; the assertions fail when that layer
is removed. Tests that need root-only layers skip where the machine does not provide them. After every
run no process of it may survive: `_survivors` scans /proc for the run root's path, which is on the
command line of every sandboxed process (and of anything it forks).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pacore_agent.evaluation.answers import (
    CodeTestResult,
    SandboxConfig,
    Verdict,
    arun_code_tests,
    extract_program,
    grade_code,
    run_code_tests,
)
from pacore_agent.exceptions import UsageError
from tests._data import load_jsonl

ONE_TEST = [{"input": "", "output": "done\n", "testtype": "stdin"}]


@pytest.fixture
def root() -> Iterator[Path]:
    """Parent of the runs' private directories; its unique path marks every process of the runs."""
    path = Path(tempfile.mkdtemp(prefix="pacore-sandbox-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _config(root: Path, **overrides: Any) -> SandboxConfig:
    overrides.setdefault("timeout_s", 3.0)
    return SandboxConfig(tmp_dir=str(root), **overrides)


def _run(
    program: str, root: Path, tests: list[dict[str, Any]] | None = None, **overrides: Any
) -> CodeTestResult:
    return run_code_tests(textwrap.dedent(program), tests or ONE_TEST, _config(root, **overrides))


def _survivors(root: Path) -> list[str]:
    """Live processes whose command line mentions ``root`` (zombies have an empty command line)."""
    marker = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                found.append(f"{entry.name}: {cmdline[:120]!r}")
    return found


_UNSHARE_PROBE = "import ctypes, sys; sys.exit(ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0)"


@pytest.fixture(scope="module")
def layers() -> frozenset[str]:
    """The root-only layers this machine allows, found without the sandbox, so that a sandbox that
    silently loses a layer fails the tests below instead of skipping them."""
    allowed = {"leftover_scan"} if Path("/proc/self/stat").exists() else set()
    if os.geteuid() == 0:
        allowed |= {"unprivileged_uid", "process_limit"}
    if subprocess.run([sys.executable, "-c", _UNSHARE_PROBE], check=False).returncode == 0:
        allowed.add("network_namespace")
    return frozenset(allowed)


def _needs(layers: frozenset[str], *names: str) -> None:
    missing = [name for name in names if name not in layers]
    if missing:
        pytest.skip(f"this machine does not allow {missing} (needs root)")


# ---------------------------------------------------------------------------------------------------------
# Protections
# ---------------------------------------------------------------------------------------------------------


def test_layers_report_what_took_effect(root: Path, layers: frozenset[str]) -> None:
    result = _run("print('done')", root)
    assert result.all_passed, result
    always = {"private_directory", "wall_clock_limit", "output_cap", "process_group_kill", "cpu_limit"}
    assert always | {"memory_limit", "file_size_limit", "open_files_limit", "audit_hook"} | layers <= set(
        result.layers
    )
    result = _run("print('done')", root, audit_hook=False, isolate_network=False, drop_privileges=False)
    assert result.all_passed
    assert not {"audit_hook", "network_namespace", "unprivileged_uid"} & set(result.layers)


def test_socket_is_blocked(root: Path) -> None:
    """Protection: the audit hook (socket.__new__). Without it the socket is made and 'made' printed."""
    result = _run(
        """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        print("made")
        """,
        root,
    )
    verdict = result.verdicts[0]
    assert verdict.verdict is Verdict.BLOCKED, verdict
    assert "socket" in verdict.detail
    assert "made" not in verdict.stdout
    assert not _survivors(root)


def test_network_namespace_cuts_even_loopback(root: Path, layers: frozenset[str]) -> None:
    """Protection: the network namespace (audit hook off). Without it the program reaches our listener."""
    _needs(layers, "network_namespace")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        result = _run(
            f"""
            import socket
            s = socket.socket()
            s.settimeout(1)
            s.connect(("127.0.0.1", {port}))
            print("connected")
            """,
            root,
            audit_hook=False,
        )
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            reached = False
        else:
            connection.close()
            reached = True
    assert not reached, "the sandboxed program reached the loopback listener"
    verdict = result.verdicts[0]
    assert verdict.verdict is Verdict.RUNTIME_ERROR, verdict
    assert "unreachable" in verdict.stderr
    assert not _survivors(root)


def test_fork_bomb_is_blocked(root: Path) -> None:
    """Protection: the audit hook (os.fork). Without it the process limit still contains the bomb."""
    start = time.monotonic()
    result = _run(
        """
        import os
        while True:
            os.fork()
        """,
        root,
    )
    verdict = result.verdicts[0]
    assert verdict.verdict is Verdict.BLOCKED, verdict
    assert "os.fork" in verdict.detail
    assert time.monotonic() - start < 3
    assert not _survivors(root)


def test_forking_is_capped_by_the_process_limit(root: Path, layers: frozenset[str]) -> None:
    """Protection: RLIMIT_NPROC under the run's own uid (audit hook off; root does not feel NPROC).

    Without it all 200 forks succeed and no 'fork failed' line is printed (bounded, so removing the
    protection cannot hurt the machine).
    """
    _needs(layers, "unprivileged_uid", "process_limit")
    result = _run(
        """
        import os, time
        forks = 0
        try:
            while forks < 200:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                forks += 1
        except OSError as exc:
            print("fork failed after", forks, type(exc).__name__, flush=True)
        print("forks", forks)
        """,
        root,
        max_processes=8,
        audit_hook=False,
    )
    stdout = result.verdicts[0].stdout
    assert "fork failed after" in stdout, result
    assert stdout.split()[3:5] == [stdout.split()[3], "BlockingIOError"]
    assert 0 < int(stdout.split()[3]) < 8
    assert not _survivors(root)  # the sleeping children were killed


def test_8gb_allocation_hits_the_memory_limit(root: Path) -> None:
    """Protection: RLIMIT_AS. Without it the 8 GB are allocated and the length printed."""
    result = _run("x = bytearray(8 * 1024**3)\nprint(len(x))", root)
    verdict = result.verdicts[0]
    assert verdict.verdict is Verdict.MEMORY, verdict
    assert verdict.stdout == ""
    assert not _survivors(root)


@pytest.mark.parametrize(
    "program",
    [
        "open(TARGET, 'w').write('escaped')",
        "import os\nos.close(os.open(TARGET, os.O_WRONLY | os.O_CREAT))",
        "import os\nopen('inside.txt', 'w').close()\nos.rename('inside.txt', TARGET)",
        "import os\nos.mkdir(TARGET)",
        "import shutil\nopen('inside.txt', 'w').close()\nshutil.copyfile('inside.txt', TARGET)",
    ],
    ids=["open", "os.open", "rename", "mkdir", "copyfile"],
)
def test_writing_outside_the_run_directory_is_blocked(root: Path, program: str) -> None:
    """Protection: the audit hook (writes outside the directory). Without it the run's unprivileged uid
    can still create the file, because /tmp is world-writable."""
    target = Path(tempfile.gettempdir()) / f"pacore-escape-{uuid.uuid4().hex}"
    try:
        result = _run(f"TARGET = {str(target)!r}\n{program}\nprint('done')", root)
        verdict = result.verdicts[0]
        assert verdict.verdict is Verdict.BLOCKED, verdict
        assert not target.exists()
        assert not _survivors(root)
    finally:
        if target.is_dir():
            target.rmdir()
        elif target.exists():
            target.unlink()


def test_writing_inside_the_run_directory_works(root: Path) -> None:
    result = _run(
        """
        import os
        os.mkdir("work")
        with open("work/notes.txt", "w") as handle:
            handle.write("done")
        os.rename("work/notes.txt", "notes.txt")
        print(open("notes.txt").read())
        """,
        root,
    )
    assert result.all_passed, result


def test_unprivileged_uid_cannot_touch_root_files(root: Path, layers: frozenset[str]) -> None:
    """Protection: the uid drop (audit hook off). Without it root writes into the root-owned directory."""
    _needs(layers, "unprivileged_uid")
    protected = Path(tempfile.mkdtemp(prefix="pacore-root-owned-"))
    protected.chmod(0o755)
    try:
        result = _run(
            f"open({str(protected / 'f')!r}, 'w').write('x')\nprint('done')", root, audit_hook=False
        )
        verdict = result.verdicts[0]
        assert verdict.verdict is Verdict.RUNTIME_ERROR, verdict
        assert "PermissionError" in verdict.stderr
        assert not (protected / "f").exists()
    finally:
        shutil.rmtree(protected)


def test_endless_output_is_cut_at_the_cap(root: Path) -> None:
    """Protection: the output cap (read at most output_bytes, then kill). Without it: a wall-clock timeout."""
    start = time.monotonic()
    result = _run("while True:\n    print('x' * 1000)", root, output_bytes=64 * 1024, excerpt_chars=100)
    verdict = result.verdicts[0]
    assert verdict.verdict is Verdict.OUTPUT_LIMIT, verdict
    assert time.monotonic() - start < 2.5
    assert verdict.stdout == "x" * 100
    assert not _survivors(root)


def test_sleeping_forever_is_stopped_by_the_wall_clock(root: Path) -> None:
    """Protection: the wall-clock limit (a sleeping program uses no CPU). Without it: the test hangs."""
    start = time.monotonic()
    result = _run("import time\ntime.sleep(10**6)", root, timeout_s=1.0)
    verdict = result.verdicts[0]
    assert verdict.verdict is Verdict.TIMEOUT, verdict
    assert "wall-clock" in verdict.detail
    assert 1.0 <= time.monotonic() - start < 2.5
    assert not _survivors(root)


def test_busy_loop_is_stopped_by_the_cpu_limit(root: Path) -> None:
    """Protection: RLIMIT_CPU (SIGXCPU after 1 s). Without it the 5 s wall-clock limit ends it, later."""
    start = time.monotonic()
    result = _run("while True:\n    pass", root, timeout_s=5.0, cpu_time_s=1)
    verdict = result.verdicts[0]
    assert verdict.verdict is Verdict.TIMEOUT, verdict
    assert "CPU" in verdict.detail
    assert time.monotonic() - start < 4.0
    assert not _survivors(root)


def test_children_in_the_process_group_are_killed(root: Path) -> None:
    """Protection: the end-of-run kill of the run's process group and session (``killpg``, then the /proc
    scan by session id; audit hook off). Without them the sleeping child survives."""
    start = time.monotonic()
    result = _run(
        """
        import os, time
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
        print("done")
        """,
        root,
        audit_hook=False,
        drop_privileges=False,  # else the scan by uid would find the child too
    )
    assert result.all_passed, result
    assert time.monotonic() - start < 2.5  # the child holds stdout open; the run ends anyway
    assert not _survivors(root)


def test_a_daemonised_grandchild_is_killed(root: Path, layers: frozenset[str]) -> None:
    """Protection: the /proc scan by the run's unique uid (audit hook off). The grandchild calls setsid(),
    leaving the process group and session, so only the uid finds it; without the scan it survives."""
    _needs(layers, "unprivileged_uid", "leftover_scan")
    result = _run(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(120)
                os._exit(0)
            os._exit(0)
        time.sleep(0.2)
        print("done")
        """,
        root,
        audit_hook=False,
    )
    assert result.all_passed, result
    assert not _survivors(root)


@pytest.mark.parametrize(
    ("program", "event"),
    [
        ("import subprocess\nsubprocess.run(['true'])", "subprocess.Popen"),
        ("import os\nos.system('true')", "os.system"),
        ("import os\nos.execv('/bin/true', ['true'])", "os.exec"),
        ("import os\nos.posix_spawn('/bin/true', ['true'], {})", "os.posix_spawn"),
        ("import ctypes\nctypes.CDLL(None).getpid()", "ctypes"),
        ("import os\nos.kill(1, 0)", "os.kill"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))", "resource.setrlimit"),
    ],
    ids=["subprocess", "system", "exec", "posix_spawn", "ctypes", "kill", "setrlimit"],
)
def test_process_creation_ctypes_and_signals_are_blocked(root: Path, program: str, event: str) -> None:
    """Protection: the audit hook (process creation, ctypes, kill, rlimit changes)."""
    result = _run(program + "\nprint('done')", root)
    verdict = result.verdicts[0]
    assert verdict.verdict is Verdict.BLOCKED, verdict
    assert event in verdict.detail
    assert not _survivors(root)


def test_each_test_gets_a_fresh_directory_that_is_removed(root: Path) -> None:
    program = "import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))\nopen('left.txt', 'w').close()"
    result = _run(program, root, tests=[{"input": "", "output": ""}, {"input": "", "output": ""}])
    directories = []
    for verdict in result.verdicts:
        cwd, listing = verdict.stdout.splitlines()
        assert listing == "['solution.py']"  # nothing left over from the previous test
        assert Path(cwd).parent == root
        directories.append(cwd)
    assert directories[0] != directories[1]
    assert not any(Path(d).exists() for d in directories)
    assert list(root.iterdir()) == []


def test_deep_recursion_and_common_imports_work(root: Path) -> None:
    result = _run(
        """
        import sys, heapq, bisect, itertools, collections, math, fractions, functools
        sys.setrecursionlimit(10**6)
        def depth(n):
            return 0 if n == 0 else 1 + depth(n - 1)
        print(depth(100000) + int(sys.stdin.readline()))
        """,
        root,
        tests=[{"input": "5\n", "output": "100005\n", "testtype": "stdin"}],
    )
    assert result.all_passed, result


# ---------------------------------------------------------------------------------------------------------
# Verdicts, comparison and bad input
# ---------------------------------------------------------------------------------------------------------


def test_output_is_compared_line_by_line_ignoring_trailing_whitespace(root: Path) -> None:
    program = "print(input() + '   ')\nprint()\nprint('')"
    tests = [
        {"input": "Yes\n", "output": "Yes\n", "testtype": "stdin"},
        {"input": "Yes\n", "output": "Yes", "testtype": "stdin"},
        {"input": "Yes\n", "output": "yes\n", "testtype": "stdin"},
        {"input": "a b\n", "output": "a  b\n", "testtype": "stdin"},
    ]
    result = _run(program, root, tests=tests)
    assert [v.verdict for v in result.verdicts] == [
        Verdict.PASSED,
        Verdict.PASSED,
        Verdict.FAILED,
        Verdict.FAILED,
    ]
    assert result.pass_rate == 0.5


def test_runtime_and_syntax_errors(root: Path) -> None:
    raised = _run("raise ValueError('bad input')", root).verdicts[0]
    assert raised.verdict is Verdict.RUNTIME_ERROR
    assert raised.detail == "ValueError: bad input"
    assert 'File "solution.py", line 1' in raised.stderr
    syntax = _run("print(", root).verdicts[0]
    assert syntax.verdict is Verdict.RUNTIME_ERROR
    assert "SyntaxError" in syntax.detail
    exit_code = _run("import sys\nsys.exit(3)", root).verdicts[0]
    assert (exit_code.verdict, exit_code.returncode) == (Verdict.RUNTIME_ERROR, 3)


def test_invalid_tests_get_a_verdict_and_do_not_count(root: Path) -> None:
    tests: list[Any] = [
        {"input": "2\n", "output": "4\n", "testtype": "stdin"},
        {"input": "2\n"},  # no expected output
        {"input": "2\n", "output": None},
        {"input": 2, "output": "4\n"},
        {"input": "2\n", "output": "4\n", "testtype": "functional"},
        "not a test",
    ]
    result = run_code_tests("print(int(input()) * 2)", tests, _config(root))
    assert [v.verdict for v in result.verdicts] == [Verdict.PASSED] + [Verdict.INVALID_TEST] * 5
    assert result.verdicts[1].detail == "the test has no expected output"
    assert (result.valid_tests, result.passed, result.pass_rate) == (1, 1, 1.0)


@pytest.mark.parametrize("conclusion", [None, "", "   ", 42, "I think we should use a greedy algorithm."])
def test_a_conclusion_without_a_program_gets_no_program_verdicts(conclusion: object) -> None:
    result = grade_code(conclusion, ONE_TEST * 2)  # type: ignore[arg-type]
    assert [v.verdict for v in result.verdicts] == [Verdict.NO_PROGRAM] * 2
    assert result.pass_rate == 0.0
    assert result.error == "no Python code block in the conclusion"


def test_bad_program_and_test_lists_never_raise() -> None:
    assert run_code_tests(None, ONE_TEST).verdicts[0].verdict is Verdict.NO_PROGRAM
    assert run_code_tests("   ", ONE_TEST).error == "no program to run"
    bad_test_lists: tuple[object, ...] = (None, [], "input", 5)
    for tests in bad_test_lists:
        result = run_code_tests("print(1)", tests)  # type: ignore[arg-type]
        assert result.pass_rate == 0.0
        assert result.error
        assert result.verdicts == ()


def test_overall_cap_skips_the_remaining_tests(root: Path) -> None:
    start = time.monotonic()
    result = _run(
        "import time\ntime.sleep(100)", root, tests=ONE_TEST * 3, timeout_s=1.0, total_timeout_s=1.5
    )
    assert [v.verdict for v in result.verdicts] == [Verdict.TIMEOUT, Verdict.TIMEOUT, Verdict.SKIPPED]
    assert result.pass_rate == 0.0
    assert time.monotonic() - start < 3.0
    assert not _survivors(root)


def test_config_is_checked_up_front() -> None:
    with pytest.raises(UsageError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(UsageError, match="memory_bytes"):
        SandboxConfig(memory_bytes=1024)


# ---------------------------------------------------------------------------------------------------------
# Program extraction
# ---------------------------------------------------------------------------------------------------------


def test_extract_program_takes_the_last_python_block() -> None:
    conclusion = (
        "First attempt:\n```python\nprint('old')\n```\nBetter:\n```py\nprint('new')\n```\n"
        "Sample run:\n```\n3\n```\nAnd in C++:\n```cpp\nint main() {}\n```\n"
    )
    assert extract_program(conclusion) == "print('new')\n"
    assert extract_program("```\nx = int(input())\nprint(x)\n```") == "x = int(input())\nprint(x)\n"
    assert extract_program("~~~python\nprint(1)\n~~~") == "print(1)\n"
    assert extract_program("````python\nprint('```')\n````") == "print('```')\n"
    assert extract_program("truncated:\n```python\nprint(1)\nprint(2") == "print(1)\nprint(2\n"
    assert extract_program("```cpp\nint main() {}\n```") is None
    assert extract_program("```python\n\n```") is None
    assert extract_program("no code") is None
    assert extract_program(None) is None
    assert extract_program(7) is None  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# LiveCodeBench subset: reference solutions pass, wrong ones do not
# ---------------------------------------------------------------------------------------------------------

REFERENCE_SOLUTIONS = {
    "abc373_a": """
        import sys
        words = sys.stdin.read().split()
        print(sum(1 for i, word in enumerate(words, start=1) if len(word) == i))
    """,
    "abc375_d": """
        # Triples i < j < k with S_i == S_k: for each k, sum over earlier equal i of (k - i - 1).
        s = input().strip()
        count, index_sum, answer = {}, {}, 0
        for k, ch in enumerate(s):
            answer += count.get(ch, 0) * (k - 1) - index_sum.get(ch, 0)
            count[ch] = count.get(ch, 0) + 1
            index_sum[ch] = index_sum.get(ch, 0) + k
        print(answer)
    """,
    "abc376_a": """
        n, c = map(int, input().split())
        last, candies = None, 0
        for t in map(int, input().split()):
            if last is None or t - last >= c:
                candies += 1
                last = t
        print(candies)
    """,
    "abc383_d": """
        # Exactly 9 divisors: p^8, or p^2 q^2 with p < q, i.e. p q <= isqrt(N).
        import bisect, math
        n = int(input())
        root = math.isqrt(n)
        sieve = bytearray([1]) * (root + 1)
        sieve[0:2] = b"\\x00\\x00"
        for i in range(2, math.isqrt(root) + 1):
            if sieve[i]:
                sieve[i * i :: i] = bytes(len(range(i * i, root + 1, i)))
        primes = [i for i in range(root + 1) if sieve[i]]
        answer = sum(1 for p in primes if p**8 <= n)
        for i, p in enumerate(primes):
            if root // p <= p:
                break
            answer += bisect.bisect_right(primes, root // p) - i - 1
        print(answer)
    """,
    "abc386_c": """
        def within_one_edit(s, t):
            if abs(len(s) - len(t)) > 1:
                return False
            if len(s) == len(t):
                return sum(a != b for a, b in zip(s, t)) <= 1
            if len(s) > len(t):
                s, t = t, s
            i = 0
            while i < len(s) and s[i] == t[i]:
                i += 1
            return s[i:] == t[i + 1 :]

        k, s, t = input(), input().strip(), input().strip()
        print("Yes" if within_one_edit(s, t) else "No")
    """,
}

WRONG_SOLUTIONS = {
    "abc376_a": """
        n, c = map(int, input().split())
        last, candies = None, 0
        for t in map(int, input().split()):
            if last is None or t - last > c:  # off by one: should be >=
                candies += 1
                last = t
        print(candies)
    """,
    "abc386_c": "print('Yes')",
    "abc373_a": "print(len(input()))",
}


def _problems() -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in load_jsonl("livecodebench_subset.jsonl")}


def test_livecodebench_subset_loads() -> None:
    problems = _problems()
    assert len(problems) == 50
    tests = [test for problem in problems.values() for test in problem["tests"]]
    assert len(tests) == 139
    for test in tests:
        assert test["testtype"] == "stdin"
        assert isinstance(test["input"], str)
        assert isinstance(test["output"], str)
        assert test["output"].strip()


@pytest.mark.parametrize("problem_id", sorted(REFERENCE_SOLUTIONS))
def test_reference_solutions_pass_every_test(problem_id: str) -> None:
    problem = _problems()[problem_id]
    result = run_code_tests(textwrap.dedent(REFERENCE_SOLUTIONS[problem_id]), problem["tests"])
    assert result.pass_rate == 1.0, result
    assert result.all_passed
    assert result.valid_tests == len(problem["tests"])


@pytest.mark.parametrize("problem_id", sorted(WRONG_SOLUTIONS))
def test_wrong_solutions_do_not_pass(problem_id: str) -> None:
    result = run_code_tests(textwrap.dedent(WRONG_SOLUTIONS[problem_id]), _problems()[problem_id]["tests"])
    assert result.pass_rate < 1.0
    assert Verdict.FAILED in {v.verdict for v in result.verdicts}


def test_grade_code_on_a_model_conclusion() -> None:
    problem = _problems()["abc376_a"]
    code = textwrap.dedent(REFERENCE_SOLUTIONS["abc376_a"]).strip()
    conclusion = (
        "He receives a candy whenever at least C seconds have passed since the last one.\n\n"
        f"```python\n{code}\n```\n\nOn the first sample this prints:\n```\n3\n```\n"
    )
    result = grade_code(conclusion, problem["tests"])
    assert result.pass_rate == 1.0, result


# ---------------------------------------------------------------------------------------------------------
# Async
# ---------------------------------------------------------------------------------------------------------


def test_async_runs_do_not_block_the_event_loop(root: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.05)
            ticks += 1

    async def main() -> CodeTestResult:
        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            result = await arun_code_tests(
                "import time\ntime.sleep(1)\nprint('done')", ONE_TEST, _config(root)
            )
            group.cancel_scope.cancel()
        return result

    result = anyio.run(main)
    assert result.all_passed, result
    assert ticks >= 10


def test_cancelling_an_async_run_stops_the_program(root: Path) -> None:
    async def main() -> None:
        with anyio.move_on_after(0.5):
            await arun_code_tests("import time\ntime.sleep(100)", ONE_TEST * 3, _config(root, timeout_s=10))

    start = time.monotonic()
    anyio.run(main)
    assert time.monotonic() - start < 1.5
    deadline = time.monotonic() + 3
    while _survivors(root) and time.monotonic() < deadline:  # the worker thread notices within ~50 ms
        time.sleep(0.05)
    assert not _survivors(root)


def test_host_side_failures_are_a_verdict_not_an_exception(root: Path) -> None:
    result = run_code_tests("print('done')", ONE_TEST, SandboxConfig(tmp_dir=str(root / "missing")))
    assert result.verdicts[0].verdict is Verdict.SANDBOX_ERROR
    assert "set-up failed" in result.verdicts[0].detail
    missing_python = run_code_tests("print('done')", ONE_TEST, _config(root, python=str(root / "no-python")))
    assert missing_python.verdicts[0].verdict is Verdict.SANDBOX_ERROR
    odd_text = _run("print('done')  # \ud800 a lone surrogate", root)  # not encodable as UTF-8
    assert odd_text.all_passed, odd_text


def test_a_program_that_closes_its_output_is_waited_for(root: Path) -> None:
    result = _run(
        """
        import os, sys, time
        print("done", flush=True)
        os.close(1)
        os.close(2)
        time.sleep(0.5)
        sys.exit(3)
        """,
        root,
    )
    verdict = result.verdicts[0]
    assert (verdict.verdict, verdict.returncode) == (Verdict.RUNTIME_ERROR, 3)
    assert verdict.wall_time_s >= 0.5
