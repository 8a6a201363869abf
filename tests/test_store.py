"""The append-only stores: resume by key, no duplicates, crash safety (SIGKILL, torn lines), concurrency."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from pacore_agent.evaluation.store import (
    PoolEntry,
    PoolKey,
    PoolMessage,
    PoolStore,
    RunKey,
    RunRecord,
    RunStore,
    StoreError,
)
from pacore_agent.exceptions import UsageError
from pacore_agent.results import RoundResult, SolveResult, Trajectory, Usage
from tests.helpers import REPO


def make_result(answer: str = "42", method: str = "pacore[4]") -> SolveResult:
    trajectory = Trajectory(
        round=0,
        index=0,
        content=f"<think>so</think>The answer is {answer}.",
        message=f"The answer is {answer}.",
        usage=Usage(prompt_tokens=10, completion_tokens=20, reasoning_tokens=5),
        finish_reason="stop",
    )
    return SolveResult(
        method=method,
        problem=[{"role": "user", "content": "What is 6*7?"}],
        answer=answer,
        final=trajectory,
        rounds=[RoundResult(index=0, width=1, trajectories=[trajectory], order=[0], messages=[answer])],
        schedule=[1],
    )


def make_record(problem_id: str = "p0", sample: int = 0, *, method: str = "pacore[4]") -> RunRecord:
    return RunRecord(
        benchmark="aime2025",
        problem_id=problem_id,
        method=method,
        sample=sample,
        result=make_result(method=method),
        predicted="42",
        correct=True,
        score=1.0,
    )


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_append_reopen_and_skip_done(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with RunStore(path) as store:
        assert store.done_keys() == frozenset()
        assert store.append_sync(make_record("p0", 0))
        assert store.append_sync(make_record("p0", 1))
        assert store.append_sync(make_record("p1", 0, method="single"))
        assert not store.append_sync(make_record("p0", 1))  # done: never written twice
        assert len(lines(path)) == 3
    with RunStore(path) as store:
        assert store.done_keys() == {
            RunKey("aime2025", "p0", "pacore[4]", 0),
            RunKey("aime2025", "p0", "pacore[4]", 1),
            ("aime2025", "p1", "single", 0),
        }
        assert RunKey("aime2025", "p1", "single", 0) in store and len(store) == 3
        assert not store.append_sync(make_record("p1", 0, method="single"))
        records = list(store.records())
    assert [(r.problem_id, r.method, r.sample) for r in records] == [
        ("p0", "pacore[4]", 0),
        ("p0", "pacore[4]", 1),
        ("p1", "single", 0),
    ]
    assert records[0] == make_record("p0", 0).model_copy(update={"finished_at": records[0].finished_at})
    assert records[0].result.usage.completion_tokens == 20
    assert len(lines(path)) == 3


def test_run_directory_layout_and_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "aime"
    config = {"model": "pacore-8b", "schedule": (16,), "temperature": 1.0}
    with RunStore.open(run_dir, config=config) as store:
        assert store.path == run_dir / "results.jsonl"
        assert store.config == {"model": "pacore-8b", "schedule": [16], "temperature": 1.0}
        store.append_sync(make_record())
    assert json.loads((run_dir / "config.json").read_text())["schedule"] == [16]
    with RunStore.open(run_dir, config=config) as store:  # resume with the same settings
        assert len(store) == 1
    with pytest.raises(UsageError, match=r"differs in: schedule, top_p.*new run directory"):
        RunStore.open(run_dir, config={**config, "schedule": [32, 4], "top_p": 1.0})
    with RunStore.open(run_dir) as store:  # no config given: nothing to check
        assert store.config is not None


def test_torn_last_line_is_cut_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with RunStore(path) as store:
        store.append_sync(make_record("p0"))
        store.append_sync(make_record("p1"))
    good = path.read_bytes()
    whole = make_record("p2").model_dump_json().encode()
    with open(path, "ab") as f:
        f.write(whole[: len(whole) // 2])  # the write that was in flight when the process died
    assert [r.problem_id for r in RunStore(path, readonly=True).records()] == ["p0", "p1"]
    with RunStore(path) as store:
        assert len(store) == 2
        assert path.read_bytes() == good
        assert store.append_sync(make_record("p2"))
    assert [r.problem_id for r in RunStore(path, readonly=True).records()] == ["p0", "p1", "p2"]


def test_unparsable_complete_last_line_is_cut_too(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with RunStore(path) as store:
        store.append_sync(make_record("p0"))
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x00\n")  # what a crashed file system may leave
    with RunStore(path) as store:
        assert len(store) == 1
        store.append_sync(make_record("p1"))
    assert len(lines(path)) == 2


def test_corrupt_line_before_the_last_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    record = make_record("p0").model_dump_json()
    path.write_text(record + "\n" + '{"benchmark": "x"}\n' + make_record("p1").model_dump_json() + "\n")
    with pytest.raises(StoreError, match=r"results.jsonl:2: line 2 is not a valid RunRecord") as info:
        RunStore(path)
    assert info.value.line == 2
    # Readers skip it, so a report can still be made from a live or damaged store.
    assert [r.problem_id for r in RunStore(path, readonly=True).records()] == ["p0", "p1"]


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with RunStore(path) as store:
        store.append_sync(make_record())
        with pytest.raises(StoreError, match="another process is writing"):
            RunStore(path)
        reader = RunStore(path, readonly=True)
        assert len(reader) == 1
        with pytest.raises(UsageError, match="read-only"):
            reader.append_sync(make_record("p1"))
    with RunStore(path) as store:  # closed: free again
        assert len(store) == 1
    with pytest.raises(UsageError, match="closed"):
        store.append_sync(make_record("p1"))
    with RunStore(tmp_path / "other.jsonl") as other, pytest.raises(UsageError, match="not PoolEntry"):
        other.append_sync(PoolEntry(problem_id="p", problem="q"))  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_concurrent_appends_from_many_tasks(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    written: list[bool] = []
    with RunStore(path) as store:

        async def finish(problem: int, sample: int) -> None:
            await anyio.lowlevel.checkpoint()
            written.append(await store.append(make_record(f"p{problem}", sample)))

        async with anyio.create_task_group() as tg:
            for _ in range(3):  # every key is appended three times, concurrently
                for problem in range(20):
                    for sample in range(4):
                        tg.start_soon(finish, problem, sample)
        assert written.count(True) == 80 and written.count(False) == 160
    keys = [RunRecord.model_validate_json(line).key for line in lines(path)]
    assert len(keys) == len(set(keys)) == 80


WRITER = """
import sys
import anyio
from pacore_agent.results import SolveResult
from pacore_agent.evaluation.store import RunRecord, RunStore

run_dir, n = sys.argv[1], int(sys.argv[2])

async def main() -> None:
    with RunStore.open(run_dir, config={"n": n}) as store:
        done = store.done_keys()

        async def solve(i: int) -> None:
            record = RunRecord(
                benchmark="bench", problem_id=f"p{i:03d}", method="m", sample=i % 2,
                result=SolveResult(method="m", problem=[{"role": "user", "content": "q" * 20000}]),
                correct=i % 3 == 0,
            )
            if record.key in done:
                return
            await anyio.sleep(0.004 * i)  # problems finish one after another, out of launch order
            await store.append(record)

        async with anyio.create_task_group() as tg:
            for i in reversed(range(n)):
                tg.start_soon(solve, i)
    print("finished", flush=True)

anyio.run(main)
"""


def run_writer(run_dir: Path, n: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(run_dir), str(n)], env=env, stdout=subprocess.PIPE, text=True
    )


def test_sigkill_midway_then_resume_ends_with_every_key_once(tmp_path: Path) -> None:
    run_dir, n = tmp_path / "run", 400
    results = run_dir / "results.jsonl"
    writer = run_writer(run_dir, n)
    deadline = time.monotonic() + 60
    while not (results.exists() and results.read_bytes().count(b"\n") >= 40):
        assert writer.poll() is None, "the writer ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    append_bytes(results, b'{"benchmark": "bench", "problem_id": "p9')  # as if killed inside a write
    with RunStore(results, readonly=True) as store:
        survivors = store.done_keys()
    assert 40 <= len(survivors) < n, len(survivors)

    writer = run_writer(run_dir, n)
    out, _ = writer.communicate(timeout=100)
    assert (writer.returncode, out.strip()) == (0, "finished")
    keys = [RunRecord.model_validate_json(line).key for line in lines(results)]
    counts = collections.Counter(keys)
    assert set(counts) == {RunKey("bench", f"p{i:03d}", "m", i % 2) for i in range(n)}
    assert set(counts.values()) == {1}
    assert survivors <= set(counts)

    size = results.stat().st_size  # a third run has nothing left to do
    writer = run_writer(run_dir, n)
    assert writer.communicate(timeout=100)[0].strip() == "finished"
    assert results.stat().st_size == size


def pool_entry(problem_id: str, part: int, grades: list[bool]) -> PoolEntry:
    return PoolEntry(
        problem_id=problem_id,
        part=part,
        problem=f"Problem {problem_id}",
        answer="42",
        model="pacore-8b",
        messages=[
            PoolMessage(
                message=f"The answer is {42 if ok else 41}.",
                predicted="42" if ok else "41",
                correct=ok,
                score=float(ok),
                usage=Usage(prompt_tokens=100, completion_tokens=1000),
                finish_reason="stop",
            )
            for ok in grades
        ],
        metadata={"temperature": 1.0},
    )


@pytest.mark.anyio
async def test_pool_store_parts_resume_and_join(tmp_path: Path) -> None:
    pool_dir = tmp_path / "pool"
    with PoolStore.open(pool_dir, config={"model": "pacore-8b", "per_problem": 6}) as store:
        assert store.path == pool_dir / "pool.jsonl"
        assert await store.append(pool_entry("a", 0, [True, False, False]))
        assert await store.append(pool_entry("b", 0, [False] * 6))
        assert not await store.append(pool_entry("a", 0, [True] * 3))
    append_bytes(pool_dir / "pool.jsonl", b'{"problem_id": "a", "part": 1, "prob')  # killed mid-write
    with PoolStore.open(pool_dir, config={"model": "pacore-8b", "per_problem": 6}) as store:
        assert store.done_keys() == {PoolKey("a", 0), PoolKey("b", 0)}
        assert await store.append(pool_entry("a", 1, [True, True, False]))
        pools = store.pools()
    assert list(pools) == ["a", "b"]
    a = pools["a"]
    assert (a.part, len(a.messages), a.accuracy) == (0, 6, 0.5)
    assert a.usage == Usage(prompt_tokens=600, completion_tokens=6000)
    assert pools["b"].accuracy == 0.0
    assert PoolEntry(problem_id="c", problem="q").accuracy is None
    assert [e.key for e in PoolStore(pool_dir / "pool.jsonl", readonly=True).entries()] == [
        ("a", 0),
        ("b", 0),
        ("a", 1),
    ]


def test_failed_write_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.jsonl"
    with RunStore(path) as store:
        store.append_sync(make_record("p0"))
        good = path.read_bytes()
        real_write = os.write

        def short_then_full(fd: int, data: bytes) -> int:
            real_write(fd, bytes(data[:100]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", short_then_full)
        with pytest.raises(OSError, match="No space left"):
            store.append_sync(make_record("p1"))
        monkeypatch.setattr(os, "write", real_write)
        assert path.read_bytes() == good and len(store) == 1
        assert store.append_sync(make_record("p1"))
    assert [r.problem_id for r in RunStore(path, readonly=True).records()] == ["p0", "p1"]
