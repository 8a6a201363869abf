"""Problems, JSONL loading, the named benchmarks (shipped files) and their download path (loopback)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import socket
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pacore_agent.evaluation.datasets import (
    BENCHMARKS,
    LIVECODEBENCH_SUBSET_IDS,
    CodeTest,
    DatasetFormatError,
    DatasetUnavailableError,
    Endpoints,
    Problem,
    default_cache_dir,
    default_data_dir,
    get_benchmark,
    load_benchmark,
    load_jsonl,
    write_jsonl,
)
from pacore_agent.exceptions import ConfigurationError, UsageError

SHIPPED = [
    ("aime2025", 30, "math"),
    ("hmmt2025", 30, "math"),
    ("imo_answerbench", 400, "math"),
    ("imo_answerbench_v1", 400, "math"),
    ("livecodebench", 50, "code"),
]


@pytest.fixture(scope="module")
def data_dir() -> Path:
    found = default_data_dir(__file__)
    if found is None or not (found / "aime2025.jsonl").is_file():
        pytest.skip("no shared/data directory above the tests and PACORE_DATA_DIR is not set")
    return found


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No data directory, an empty cache, downloads allowed (the tests point them at loopback)."""
    monkeypatch.delenv("PACORE_DATA_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("PACORE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


# --------------------------------------------------------------------------------------------------
# The shipped files


@pytest.mark.parametrize(("name", "count", "domain"), SHIPPED)
def test_shipped_benchmarks_load(data_dir: Path, name: str, count: int, domain: str) -> None:
    problems = load_benchmark(name, data_dir=data_dir)
    assert len(problems) == count == get_benchmark(name).size
    assert len({p.id for p in problems}) == count
    assert all(p.domain == domain and p.problem.strip() for p in problems)
    if domain == "code":
        assert all(p.tests and all(t.testtype == "stdin" for t in p.tests) for p in problems)
        assert sum(len(p.tests) for p in problems) == 139
        assert [p.id for p in problems] == list(LIVECODEBENCH_SUBSET_IDS)
    else:
        assert all(p.answer and not p.tests for p in problems)


def test_shipped_details(data_dir: Path) -> None:
    aime = {p.id: p for p in load_benchmark("aime2025", data_dir=data_dir)}
    assert aime["aime2025_I_1"].answer == "70"
    assert aime["aime2025_II_15"].metadata["source"].startswith("eth-sri/matharena:")
    hmmt = {p.id: p for p in load_benchmark("hmmt2025", data_dir=data_dir)}
    assert hmmt["hmmt2025feb_10"].answer == r"\frac{-1+\sqrt{17}}{2}, \frac{-1-\sqrt{17}}{2}"
    v2 = {p.id: p for p in load_benchmark("imo_answerbench", data_dir=data_dir)}
    v1 = {p.id: p for p in load_benchmark("imo_answerbench_v1", data_dir=data_dir)}
    assert v2.keys() == v1.keys()
    assert (v1["imo-bench-number_theory-055"].answer, v2["imo-bench-number_theory-055"].answer) == (
        "146250",
        "$14625$",
    )
    assert v2["imo-bench-geometry-004"].answer == "4, 5"
    assert v2["imo-bench-algebra-001"].metadata["category"] == "Algebra"
    lcb = load_benchmark("livecodebench", data_dir=data_dir)
    assert lcb[0].tests[0] == CodeTest(input="2023\n", output="365\n", testtype="stdin")
    assert lcb[0].answer == ""


def test_named_benchmark_sources(data_dir: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_file = load_benchmark("aime2025", data=data_dir / "aime2025.jsonl")
    monkeypatch.setenv("PACORE_DATA_DIR", str(data_dir))
    assert load_benchmark("AIME2025") == by_file
    monkeypatch.delenv("PACORE_DATA_DIR")
    # Found upward from the working directory, as in a checkout with shared/ beside the repository.
    nested = isolated / "checkout" / "repo" / "sub"
    nested.mkdir(parents=True)
    (isolated / "checkout" / "shared").mkdir()
    (isolated / "checkout" / "shared" / "data").symlink_to(data_dir)
    monkeypatch.chdir(nested)
    assert load_benchmark("hmmt2025_feb") == load_benchmark("hmmt2025", data_dir=data_dir)
    assert load_benchmark("hmmt2025", data=data_dir) == load_benchmark("hmmt2025", data_dir=data_dir)
    with pytest.raises(FileNotFoundError, match=r"imo_answerbench_v1\.jsonl"):
        load_benchmark("imo_answerbench_v1", data_dir=isolated)


def test_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACORE_DATA_DIR", raising=False)
    (tmp_path / "a" / "shared" / "data").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "f.py").write_text("")
    assert default_data_dir(tmp_path / "a" / "b" / "c" / "f.py") == tmp_path / "a" / "shared" / "data"
    assert default_data_dir(tmp_path / "a" / "b") == tmp_path / "a" / "shared" / "data"
    assert default_data_dir(tmp_path) is None
    monkeypatch.setenv("PACORE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert default_data_dir(tmp_path / "a" / "b") == tmp_path / "elsewhere"


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACORE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "pacore" / "datasets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "pacore" / "datasets"
    monkeypatch.setenv("PACORE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


def test_unknown_benchmark_lists_known_names() -> None:
    with pytest.raises(UsageError) as info:
        load_benchmark("aime2024")
    message = str(info.value)
    assert "aime2024" in message
    assert all(name in message for name in BENCHMARKS)


# --------------------------------------------------------------------------------------------------
# User JSONL files


def write_lines(path: Path, *lines: str | dict[str, Any]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def test_load_jsonl_user_file(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mine.jsonl",
        {"id": 1, "problem": "1+1?", "answer": 2, "level": "easy"},
        "",
        {"id": "b", "problem": "2+2?", "answer": "4", "metadata": {"level": "easy"}, "source": "me"},
        {"id": "c", "problem": "print 1", "tests": [{"input": "", "output": "1\n"}]},
    )
    a, b, c = load_jsonl(path)
    assert a == Problem(id="1", problem="1+1?", answer="2", metadata={"level": "easy"})
    assert b.metadata == {"level": "easy", "source": "me"}
    assert (c.domain, c.answer, c.tests) == ("code", "", [CodeTest(input="", output="1\n")])
    assert load_jsonl(write_jsonl(tmp_path / "copy.jsonl", [a, b, c])) == [a, b, c]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "problem": "p", "answer": "1"', "line 2: not valid JSON"),
        ('["id", "problem"]', "expected a JSON object, got list"),
        ('{"id": "x", "problem": "p"}', "missing field 'answer'"),
        ('{"problem": "p", "answer": "1"}', "missing field 'id'"),
        ('{"id": "x", "problem": "  ", "answer": "1"}', "'problem' must be a non-empty string"),
        ('{"id": "x", "problem": "p", "answer": [1]}', "'answer' must be a string or an integer"),
        ('{"id": true, "problem": "p", "answer": "1"}', "'id' must be a non-empty string or an integer"),
        ('{"id": "a", "problem": "p", "answer": "1"}', "duplicate id 'a' (first on line 1)"),
        ('{"id": "x", "problem": "p", "domain": "code"}', "missing field 'tests'"),
        ('{"id": "x", "problem": "p", "tests": []}', "'tests' must be a non-empty list"),
        ('{"id": "x", "problem": "p", "tests": [{"input": "1"}]}', "field 'tests.0.output': Field required"),
        ('{"id": "x", "problem": "p", "answer": "1", "domain": "poem"}', "'domain' must be 'math' or 'code'"),
    ],
)
def test_load_jsonl_errors_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", {"id": "a", "problem": "p", "answer": "1"}, line)
    with pytest.raises(DatasetFormatError) as info:
        load_jsonl(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert message.removeprefix("line 2: ") in str(info.value)
    assert info.value.line == 2
    assert isinstance(info.value, UsageError)


def test_load_jsonl_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": "\xe9"}\n')
    with pytest.raises(DatasetFormatError, match=r"latin1\.jsonl:2: not UTF-8"):
        load_jsonl(path)


def test_named_benchmark_file_must_fit_its_domain(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "lcb.jsonl", {"id": "x", "problem": "p", "answer": ""})
    with pytest.raises(DatasetFormatError, match="missing field 'tests'"):
        load_benchmark("livecodebench", data=path)


# --------------------------------------------------------------------------------------------------
# Downloads: offline errors, and the whole path against a loopback server

Route = bytes | Callable[[dict[str, str]], bytes]


class FakeHub:
    """A loopback HTTP server: path -> body (or a function of the query); 404 elsewhere."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                route = hub.routes.get(url.path)
                if route is None:
                    self.send_error(404)
                    return
                query = dict(urllib.parse.parse_qsl(url.query))
                body = route if isinstance(route, bytes) else route(query)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.endpoints = Endpoints(hub=self.url, rows=self.url, github_raw=self.url, timeout_s=10)


@pytest.fixture
def fake_hub(isolated: Path) -> Iterator[FakeHub]:
    hub = FakeHub()
    thread = threading.Thread(target=hub.server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield hub
    hub.server.shutdown()
    hub.server.server_close()
    thread.join()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_offline_error_says_how_to_supply_data(isolated: Path, name: str) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"
    endpoints = Endpoints(hub=nowhere, rows=nowhere, github_raw=nowhere, timeout_s=5)
    with pytest.raises(DatasetUnavailableError) as info:
        load_benchmark(name, endpoints=endpoints)
    message = str(info.value)
    assert "--data PATH" in message and "PACORE_DATA_DIR" in message
    assert get_benchmark(name).filename in message
    assert "127.0.0.1" in message  # which download failed
    assert isinstance(info.value, ConfigurationError)
    assert not (isolated / "cache" / get_benchmark(name).filename).exists()


def test_downloads_disabled(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetUnavailableError, match=r"downloads are disabled.*--data PATH"):
        load_benchmark("aime2025", download=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError, match=r"HF_HUB_OFFLINE is set.*PACORE_DATA_DIR"):
        load_benchmark("aime2025")


def rows_api(rows: list[dict[str, Any]], page: int = 2) -> Callable[[dict[str, str]], bytes]:
    """The dataset viewer's /rows answer, in pages smaller than asked to exercise paging."""

    def answer(query: dict[str, str]) -> bytes:
        offset = int(query["offset"])
        chunk = rows[offset : offset + min(page, int(query["length"]))]
        items = [{"row_idx": offset + i, "row": row, "truncated_cells": []} for i, row in enumerate(chunk)]
        return json.dumps({"features": [], "rows": items, "num_rows_total": len(rows)}).encode()

    return answer


def test_download_matharena_rows_then_cache(fake_hub: FakeHub, isolated: Path) -> None:
    rows = [
        {"problem_idx": 16, "problem": " Find $x$. ", "answer": 7, "problem_type": ["Algebra"]},
        {"problem_idx": 1, "problem": "Find $y$.", "answer": 70, "problem_type": ["Number Theory"]},
        {"problem_idx": 2, "problem": "Find $z$.", "answer": 588, "problem_type": ["Geometry"]},
    ]
    fake_hub.routes["/rows"] = rows_api(rows)
    problems = load_benchmark("aime2025", endpoints=fake_hub.endpoints)
    assert [(p.id, p.problem, p.answer) for p in problems] == [
        ("aime2025_I_1", "Find $y$.", "70"),
        ("aime2025_I_2", "Find $z$.", "588"),
        ("aime2025_II_1", "Find $x$.", "7"),
    ]
    assert problems[0].metadata == {
        "problem_idx": 1,
        "problem_type": ["Number Theory"],
        "source": "hf:MathArena/aime_2025",
    }
    assert len(fake_hub.requests) == 2  # two pages
    assert "dataset=MathArena%2Faime_2025" in fake_hub.requests[0]
    cached = isolated / "cache" / "aime2025.jsonl"
    assert load_jsonl(cached) == problems
    # The second call reads the cache: no request, even with the hub gone.
    assert load_benchmark("aime2025", endpoints=Endpoints(hub="http://127.0.0.1:1")) == problems
    assert len(fake_hub.requests) == 2

    fake_hub.routes["/rows"] = rows_api([{"problem_idx": 10, "problem": "Q", "answer": r"\frac{1}{2}"}])
    (hmmt,) = load_benchmark("hmmt2025", endpoints=fake_hub.endpoints)
    assert (hmmt.id, hmmt.answer) == ("hmmt2025feb_10", r"\frac{1}{2}")


def test_download_unexpected_response(fake_hub: FakeHub) -> None:
    fake_hub.routes["/rows"] = b'{"error": "The dataset does not exist."}'
    with pytest.raises(DatasetUnavailableError, match=r"unexpected response.*--data PATH"):
        load_benchmark("aime2025", endpoints=fake_hub.endpoints)
    fake_hub.routes["/rows"] = b"<html>"
    with pytest.raises(DatasetUnavailableError, match="not JSON"):
        load_benchmark("hmmt2025", endpoints=fake_hub.endpoints)


# The upstream v2 CSV's corruption patterns, on made-up problems (ids matter: two fixes are per id).
IMO_CSV = '''Problem ID,Problem,Short Answer,Category,Subcategory,Source
imo-bench-algebra-001,"Find all $N$.
",3,Algebra,Operation,IMO Shortlist 2021
imo-bench-algebra-036,"Find all functions $Y$.
\\[
Y(a)=a
\\]
,$Y(x)=x$",Algebra,Functional Equation,Iran 2002
imo-bench-geometry-004,"Find $n$, with ""quotes"" kept.
",45752,Geometry,combinatorial_geometry,Sharygin 2009
imo-bench-geometry-096," Find the area.
",$\\frac{7}{18},Geometry,extremal_geometry,USAMTS 2016
imo-bench-number_theory-055,"""A number is """"good"""" if it is.
""",$14625$,Number theory,Base and Digit,Estonia TST 2018
'''


def test_download_imo_answerbench_csv_with_repairs(fake_hub: FakeHub) -> None:
    commit = "a02069ef66dbae4c5b0713ba0dc144a35375558f"
    fake_hub.routes[f"/google-deepmind/superhuman/{commit}/imobench/answerbench_v2.csv"] = IMO_CSV.encode()
    problems = {p.id: p for p in load_benchmark("imo_answerbench", endpoints=fake_hub.endpoints)}
    assert [(p.problem, p.answer) for p in problems.values()] == [
        ("Find all $N$.", "3"),
        ("Find all functions $Y$.\n\\[\nY(a)=a\n\\]", "$Y(x)=x$"),
        ('Find $n$, with "quotes" kept.', "4, 5"),
        ("Find the area.", "$\\frac{7}{18}$"),
        ('A number is "good" if it is.', "$14625$"),
    ]
    assert problems["imo-bench-algebra-036"].metadata == {
        "category": "Algebra",
        "subcategory": "Functional Equation",
        "competition": "Iran 2002",
        "source": f"google-deepmind/superhuman:imobench/answerbench_v2.csv@{commit}",
        "repair_note": "upstream CSV row malformed (missing closing quote); fields re-split",
    }
    assert "repair_note" not in problems["imo-bench-algebra-001"].metadata
    assert all("repair_note" in p.metadata for p in list(problems.values())[1:])
    # v1 is its own file at the same commit; a healthy file is left as it is.
    fake_hub.routes[f"/google-deepmind/superhuman/{commit}/imobench/answerbench.csv"] = (
        IMO_CSV.splitlines()[0] + '\nimo-bench-geometry-004,"Find $n$.","4, 5",Geometry,c,Sharygin 2009\n'
    ).encode()
    (v1,) = load_benchmark("imo_answerbench_v1", endpoints=fake_hub.endpoints)
    assert (v1.answer, "repair_note" in v1.metadata) == ("4, 5", False)


def pack_private(tests: Any) -> str:
    """LiveCodeBench's encoding of private tests: base64(zlib(pickle(json string)))."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def lcb_row(question_id: str, **changes: Any) -> dict[str, Any]:
    row = {
        "question_title": f"Title {question_id}",
        "question_content": f"Statement of {question_id}.",
        "platform": "atcoder",
        "question_id": question_id,
        "contest_id": question_id.split("_")[0],
        "contest_date": "2024-08-03T00:00:00",
        "starter_code": "",
        "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "1\r\n", "output": "2\r\n", "testtype": "stdin"}]),
        "private_test_cases": pack_private([{"input": "5\n", "output": "6\n", "testtype": "stdin"}]),
        "metadata": "{}",
    }
    return row | changes


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


LCB_PATH = "/datasets/livecodebench/code_generation_lite/resolve/main/"


def test_download_livecodebench_subset(fake_hub: FakeHub, isolated: Path) -> None:
    ids = list(LIVECODEBENCH_SUBSET_IDS)
    fake_hub.routes[LCB_PATH + "test4.jsonl"] = jsonl_bytes([lcb_row(i) for i in ids[:30]])
    fake_hub.routes[LCB_PATH + "test5.jsonl"] = jsonl_bytes(
        [lcb_row("1234_leetcode", platform="leetcode")] + [lcb_row(i) for i in reversed(ids[30:])]
    )
    problems = load_benchmark("livecodebench", endpoints=fake_hub.endpoints)
    assert [p.id for p in problems] == ids
    first = problems[0]
    assert first.domain == "code" and first.answer == ""
    assert first.problem == "Statement of abc365_a."
    assert first.tests == [CodeTest(input="1\n", output="2\n"), CodeTest(input="5\n", output="6\n")]
    assert first.metadata["test_kind"] == "public_and_private"
    assert first.metadata["contest_id"] == "abc365"
    assert [urllib.parse.urlsplit(r).path.rsplit("/", 1)[1] for r in fake_hub.requests] == [
        "test4.jsonl",
        "test5.jsonl",
    ]
    assert load_jsonl(isolated / "cache" / "livecodebench_subset.jsonl") == problems


def test_download_livecodebench_refuses_pickled_objects(fake_hub: FakeHub) -> None:
    evil = base64.b64encode(zlib.compress(pickle.dumps(os.getcwd))).decode()
    fake_hub.routes[LCB_PATH + "test4.jsonl"] = jsonl_bytes([lcb_row("abc365_a", private_test_cases=evil)])
    with pytest.raises(DatasetUnavailableError, match=r"abc365_a.*refusing to load"):
        load_benchmark("livecodebench", endpoints=fake_hub.endpoints)


def test_download_livecodebench_missing_file(fake_hub: FakeHub) -> None:
    fake_hub.routes[LCB_PATH + "test4.jsonl"] = jsonl_bytes([lcb_row("abc365_a")])
    with pytest.raises(DatasetUnavailableError, match=r"test5.jsonl: HTTP 404"):
        load_benchmark("livecodebench", endpoints=fake_hub.endpoints)
