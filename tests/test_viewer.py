"""The HTML page of `pacore report --html`, checked in a real headless browser (Debian's chromium).

The runs come from `pacore bench` against the simulated server over loopback HTTP, or from hand-made
records through the store API. The browser loads the page from a file with every network route closed;
the tests read the DOM it renders and compare its counts with what the run holds.

Without a chromium on PATH the browser tests are skipped, unless PACORE_REQUIRE_BROWSER is set (CI sets
it), in which case they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest

from pacore_agent import Faults, OpenAIBackend, SimConfig, SimServer, UsageError
from pacore_agent.evaluation.bench import BenchSettings, parse_methods, read_failures, run_bench
from pacore_agent.evaluation.datasets import Problem
from pacore_agent.evaluation.store import RunRecord, RunStore
from pacore_agent.evaluation.viewer import MESSAGE_BUDGET, TEXT_BUDGET, TEXT_LIMIT, page_data, write_html
from pacore_agent.results import RoundResult, SolveResult, Trajectory, Usage
from tests.helpers import closed_port, run_pacore

METHODS = ["pacore:[4,2]", "sc@4", "single"]
PROBLEMS = [
    Problem(id=f"q{i}", problem=f"Compute {i} * {i + 3}.", answer=str(i * (i + 3))) for i in range(1, 6)
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("PACORE_REQUIRE_BROWSER"):
            pytest.fail("PACORE_REQUIRE_BROWSER is set but no chromium is on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium; CI sets PACORE_REQUIRE_BROWSER=1)")
    return found


def browse(
    page: Path,
    fragment: str = "",
    *,
    profile: Path,
    screenshot: Path | None = None,
    netlog: Path | None = None,
    size: str = "1400,1000",
) -> str:
    """The DOM chromium renders for ``page#fragment`` with the network closed (or a screenshot of it)."""
    closed = closed_port()
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root, where chromium refuses its sandbox
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # No route out: every proxied request hits a closed loopback port, every name fails to resolve.
        f"--proxy-server=127.0.0.1:{closed}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=5000",  # scripts run to completion before the dump, without real waiting
        "--enable-logging=stderr",  # the page's console, where a script error would show
        "--v=0",
        f"--window-size={size}",
    ]
    if netlog is not None:
        command.append(f"--log-net-log={netlog}")
    command.append(f"--screenshot={screenshot}" if screenshot is not None else "--dump-dom")
    command.append(page.resolve().as_uri() + fragment)
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # the page logs nothing: no script error, no CSP violation
    return done.stdout


class Dom(HTMLParser):
    """Elements of a dumped DOM with their attributes and ancestors (enough for counting)."""

    VOID = frozenset(
        ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"]
    )

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[dict[str, Any]] = []
        self._stack: list[dict[str, Any]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        element = {
            "tag": tag,
            "attrs": attributes,
            "classes": set(attributes.get("class", "").split()),
            "parents": list(self._stack),
            "text": [],
        }
        self.elements.append(element)
        if tag not in self.VOID:
            self._stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._stack:
            element["text"].append(data)

    def find(self, cls: str, *, within: dict[str, Any] | None = None, **data: str) -> list[dict[str, Any]]:
        """Elements with class ``cls`` (and ``data-*`` values), optionally inside ``within``."""
        found = []
        for element in self.elements:
            if cls not in element["classes"]:
                continue
            if any(element["attrs"].get(f"data-{k}") != v for k, v in data.items()):
                continue
            if within is not None and not any(p is within for p in element["parents"]):
                continue
            found.append(element)
        return found


def text_of(element: dict[str, Any]) -> str:
    return "".join(element["text"])


# -- the run -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark run of the simulated server: three methods, three samples, failures of two kinds.

    The first request of each of two passes is refused with a 400: in the first pass (``single``) that
    fails the item, which goes to failures.jsonl; in the second, one trajectory of a PaCoRe round fails
    and the solve carries on without it.
    """
    out = tmp_path_factory.mktemp("viewer") / "run"
    config = SimConfig(
        seed=5,
        accuracy=0.45,
        answers={p.problem: p.answer for p in PROBLEMS},
        think_words=12,
        synth_recover=0.35,  # syntheses now and then right against their references: emergent samples
        record_requests=False,
        faults=Faults(script=("bad_request",)),
    )

    async def bench() -> None:
        for methods in (["single"], ["pacore:[4,2]", "sc@4"]):
            settings = BenchSettings(
                "toy", parse_methods(methods), samples=3, max_in_flight=1, keep_trajectories=True
            )
            async with SimServer(config) as server, OpenAIBackend(server.base_url) as backend:
                await run_bench(settings, PROBLEMS, backend, out)

    anyio.run(bench)
    return out


def failure_problems(directory: Path) -> set[str]:
    """Problems with a failed item, or a record that stopped early or lost a trajectory."""
    failed = {f.problem_id for f in read_failures(directory)}
    return failed | {
        r.problem_id
        for r in records_of(directory)
        if r.error or any(t.status == "failed" for t in r.result.trajectories)
    }


def records_of(directory: Path) -> list[RunRecord]:
    return list(RunStore.open(directory, readonly=True).records())


@pytest.fixture(scope="module")
def page(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("page") / "run.html"
    done = run_pacore("report", str(run_dir), "--html", str(target))
    assert done.returncode == 0, done.stderr
    assert f"wrote {target}" in done.stderr.replace("\n", "")
    return target


def fragment(**state: object) -> str:
    return "#" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in state.items())


# -- the page in the browser ---------------------------------------------------------------------------


def test_dom_counts_equal_the_run(run_dir: Path, page: Path, tmp_path: Path) -> None:
    records = records_of(run_dir)
    failed = read_failures(run_dir)
    assert len(records) == len(PROBLEMS) * len(METHODS) * 3 - 1 and len(failed) == 1
    per_problem = Counter(r.problem_id for r in records) + Counter(f.problem_id for f in failed)
    problem = failed[0].problem_id  # the problem holding the failed item: every kind of sample shows

    dom = Dom(browse(page, fragment(problem=problem), profile=tmp_path / "profile"))
    rows = dom.find("problem")
    assert [r["attrs"]["data-problem"] for r in rows] == sorted(per_problem)
    assert len(dom.find("summary-row")) == len(METHODS)
    for row in dom.find("summary-row"):  # the report's honest columns: the failed item counts
        (cell,) = dom.find("n-failed", within=row)
        expected = sum(f.method == row["attrs"]["data-method"] for f in failed)
        assert text_of(cell) == str(expected)
    view = dom.find("problem-view")
    assert len(view) == 1
    methods = dom.find("method", within=view[0])
    assert sorted(m["attrs"]["data-method"] for m in methods) == sorted(METHODS)
    for method in methods:
        name = method["attrs"]["data-method"]
        cells = dom.find("sample", within=method)
        held = [r.sample for r in records if (r.problem_id, r.method) == (problem, name)]
        held += [f.sample for f in failed if (f.problem_id, f.method) == (problem, name)]
        assert sorted(int(c["attrs"]["data-sample"]) for c in cells) == sorted(held)
    failed_cells = [c for c in dom.find("sample", within=view[0]) if "o-2" in c["classes"]]
    assert len(failed_cells) == 1 and failed_cells[0]["attrs"]["data-sample"] == str(failed[0].sample)
    assert not dom.find("sample-view")  # nothing is drawn before it is asked for


def test_an_expanded_sample_shows_one_card_per_trajectory(run_dir: Path, page: Path, tmp_path: Path) -> None:
    record = next(r for r in records_of(run_dir) if r.method == "pacore:[4,2]" and r.correct is not None)
    result = record.result
    final = result.final
    assert final is not None
    text_key = f"{result.rounds[0].index}.{result.rounds[0].trajectories[1].index}"
    state = {"problem": record.problem_id, "method": record.method, "sample": record.sample, "text": text_key}
    dom = Dom(browse(page, fragment(**state), profile=tmp_path / "profile"))

    view = dom.find("sample-view")
    assert len(view) == 1 and view[0]["attrs"]["data-sample"] == str(record.sample)
    rounds = dom.find("round", within=view[0])
    assert len(rounds) == len(result.rounds) == 3
    for column, round_ in zip(rounds, result.rounds, strict=True):
        cards = dom.find("card", within=column)
        assert [int(c["attrs"]["data-index"]) for c in cards] == [t.index for t in round_.trajectories]
        if round_ is not result.rounds[-1]:  # the reference order that fed the next round
            refs = [r["attrs"]["data-index"] for r in dom.find("ref", within=column)]
            assert refs == [str(i) for i in round_.order]
    final_cards = dom.find("final", within=view[0])
    assert [(c["attrs"]["data-round"], c["attrs"]["data-index"]) for c in final_cards] == [
        (str(final.round), str(final.index))
    ]
    verdict = "c1" if record.correct else "c0"
    assert verdict in final_cards[0]["classes"]
    assert [text_of(c) for c in dom.find("said", within=final_cards[0])] == [record.predicted]
    # Message grades sit on the cards of the rounds they were graded in (reference order).
    graded = record.info["grading"]["rounds"][0]["correct"]
    first = {int(c["attrs"]["data-index"]): c for c in dom.find("card", within=rounds[0])}
    for position, index in enumerate(result.rounds[0].order):
        assert ("c1" if graded[position] else "c0") in first[index]["classes"]
    # The full text asked for in the fragment is drawn; the others are not.
    shown = [text_of(t) for t in dom.find("full", within=view[0]) if "hidden" not in t["attrs"]]
    assert shown == [result.rounds[0].trajectories[1].text]


def test_filters_narrow_the_list(run_dir: Path, page: Path, tmp_path: Path) -> None:
    records = records_of(run_dir)
    everything = {r.problem_id for r in records}

    def listed(**state: object) -> set[str]:
        dom = Dom(browse(page, fragment(**state), profile=tmp_path / "profile"))
        return {r["attrs"]["data-problem"] for r in dom.find("problem")}

    assert listed() == everything
    assert listed(filter="failures") == failure_problems(run_dir)
    assert 1 <= len(failure_problems(run_dir)) < len(everything)
    assert any(t.status == "failed" for r in records for t in r.result.trajectories)
    wrong_single = {r.problem_id for r in records if r.method == "single" and r.correct is False}
    assert listed(filter="wrong", only="single") == wrong_single
    emergent = {r.problem_id for r in records if r.info["grading"]["emergent"]}
    assert listed(filter="emergent") == emergent and emergent
    all_wrong = {
        r.problem_id
        for r in records
        if r.info["grading"]["rounds"] and not any(r.info["grading"]["rounds"][-1]["correct"])
    }
    assert listed(filter="allwrong") == all_wrong and emergent < all_wrong
    # One method only: the expanded problem shows that method's row alone.
    dom = Dom(browse(page, fragment(problem="q1", only="sc@4"), profile=tmp_path / "profile"))
    assert [m["attrs"]["data-method"] for m in dom.find("method")] == ["sc@4"]


def test_screenshot_of_an_expanded_sample(run_dir: Path, page: Path, tmp_path: Path) -> None:
    """Writes the screenshot to PACORE_VIEWER_SCREENSHOT (a directory) when set, for a person to look at."""
    record = next(r for r in records_of(run_dir) if r.method == "pacore:[4,2]")
    folder = Path(os.environ.get("PACORE_VIEWER_SCREENSHOT") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "viewer.png"
    target.unlink(missing_ok=True)
    state = {"problem": record.problem_id, "method": record.method, "sample": record.sample}
    # Tall enough that the whole page fits: headless screenshots of a scrolled page come out blank.
    browse(page, fragment(**state), profile=tmp_path / "profile", screenshot=target, size="1400,2200")
    png = target.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_several_runs_on_one_page(run_dir: Path, tmp_path: Path) -> None:
    for name in ("before", "after"):
        shutil.copytree(run_dir, tmp_path / name)
    page = write_html([tmp_path / "before", tmp_path / "after"], tmp_path / "both.html", plot=False)
    state = {"run": "after", "bench": "toy", "problem": "q2", "method": "sc@4", "sample": 1}
    dom = Dom(browse(page, fragment(**state), profile=tmp_path / "profile"))
    groups = dom.find("group")
    assert [(g["attrs"]["data-run"], g["attrs"]["data-bench"]) for g in groups] == [
        ("after", "toy"),
        ("before", "toy"),
    ]
    assert len(dom.find("summary-row")) == 2 * len(METHODS)
    views = dom.find("problem-view")
    assert len(views) == 1 and any(p is groups[0] for p in views[0]["parents"])  # only the linked run's
    record = next(r for r in records_of(run_dir) if (r.problem_id, r.method, r.sample) == ("q2", "sc@4", 1))
    assert len(dom.find("card", within=views[0])) == len(record.result.trajectories) == 4


# -- no network ----------------------------------------------------------------------------------------


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked for (the browser's own background requests have no page origin)."""
    events = json.loads(netlog.read_text(encoding="utf-8"))["events"]
    return [
        e["params"]["url"]
        for e in events
        if "url" in e.get("params", {}) and e["params"].get("initiator", "not an origin") != "not an origin"
    ]


def test_the_page_references_nothing_outside_itself(page: Path, tmp_path: Path) -> None:
    html = page.read_text(encoding="utf-8")
    assert "://" not in html  # an endpoint named in an error message is escaped as :\/\/
    assert not re.search(r"(?i)\b(?:src|href|action)\s*=\s*[\"']?(?!#|data:)[^\s\"'>]", html)
    assert not re.search(r"(?i)url\(\s*[\"']?(?!data:)|@import|<link\b|<iframe\b", html)
    assert not re.search(r"\b(?:fetch|XMLHttpRequest|WebSocket|EventSource|sendBeacon|importScripts)\b", html)
    assert "default-src 'none'" in html  # and the page forbids itself any load
    # In the browser: the page makes no request at all. A control page that does is caught the same way.
    log = tmp_path / "net.json"
    browse(page, fragment(problem="q1"), profile=tmp_path / "profile", netlog=log)
    assert page_requests(log) == []
    control = tmp_path / "control.html"
    control.write_text('<img src="http://192.0.2.1/x.png">', encoding="utf-8")
    browse(control, profile=tmp_path / "profile2", netlog=log)
    assert page_requests(log) == ["http://192.0.2.1/x.png"]


# -- bad directories ---------------------------------------------------------------------------------


def test_directories_without_results_or_with_corrupt_records(run_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_pacore("report", str(empty), "--html", str(tmp_path / "x.html"))
    assert done.returncode != 0 and "holds no benchmark results" in " ".join(done.stderr.split())
    assert not (tmp_path / "x.html").exists()

    with pytest.raises(UsageError, match="pass another --html FILE"):
        write_html([run_dir], tmp_path, plot=False)  # a directory, not a file

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "results.jsonl").write_text("not json\n{}\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no records"):
        page_data([garbage])

    # A corrupt line among good ones is left out, as `pacore report` leaves it out, and the page says so.
    torn = tmp_path / "torn"
    torn.mkdir()
    lines = (run_dir / "results.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (torn / "results.jsonl").write_text("".join([lines[0], "{broken\n", *lines[1:]]), encoding="utf-8")
    data = page_data([torn], plot=False)
    assert sum(len(p["s"]) for g in data["groups"] for p in g["problems"]) == len(lines)
    assert any("1 line(s) of results.jsonl are not valid records" in w for w in data["warnings"])


# -- large runs ----------------------------------------------------------------------------------------


def large_run(directory: Path, *, problems: int = 30, samples: int = 64, message_chars: int = 1200) -> int:
    """A hand-made pacore:high run (32 + 4 + 1 trajectories a sample) written through the store API.

    Like `pacore bench` by default, only the final trajectory keeps its full text. Returns the trajectories.
    """
    filler = "Checking each case in turn, the bound holds and the sum telescopes. "
    message = (filler * (message_chars // len(filler) + 1))[:message_chars]
    full = "<think>" + filler * 300 + "</think>" + message
    count = 0
    with RunStore.open(directory, config={"benchmark": "synthetic", "model": "m"}) as store:
        for p in range(problems):
            for s in range(samples):
                rounds = []
                for r, width in enumerate((32, 4, 1)):
                    trajectories = [
                        Trajectory(
                            round=r,
                            index=i,
                            message=f"[{p}.{s}.{r}.{i}] {message}\\boxed{{{(p + i) % 7}}}",
                            finish_reason="stop",
                            usage=Usage(prompt_tokens=300, completion_tokens=4000 + i),
                            latency_s=12.5,
                            content=full if width == 1 else None,
                        )
                        for i in range(width)
                    ]
                    rounds.append(
                        RoundResult(index=r, width=width, trajectories=trajectories, order=list(range(width)))
                    )
                    count += width
                correct = (p + s) % 3 == 0
                grading = {
                    "predicted": "1",
                    "score": float(correct),
                    "correct": correct,
                    "rounds": [
                        {"index": 0, "correct": [(p + i) % 7 == 1 for i in range(32)]},
                        {"index": 1, "correct": [(p + i) % 7 == 1 for i in range(4)]},
                    ],
                    "emergent": False,
                }
                result = SolveResult(
                    method="pacore:high",
                    problem=[{"role": "user", "content": f"Problem {p}: find the sum."}],
                    answer=message,
                    final=rounds[-1].trajectories[0],
                    rounds=rounds,
                    schedule=[32, 4, 1],
                )
                store.append_sync(
                    RunRecord(
                        benchmark="synthetic",
                        problem_id=f"p{p}",
                        method="pacore:high",
                        sample=s,
                        result=result,
                        predicted="1",
                        correct=correct,
                        score=float(correct),
                        info={"grading": grading},
                    )
                )
    return count


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_of_70k_trajectories_opens(tmp_path: Path) -> None:
    count = large_run(tmp_path / "large")
    assert count == 30 * 64 * 37
    start = time.perf_counter()
    page = write_html([tmp_path / "large"], tmp_path / "large.html", plot=False)
    written = time.perf_counter() - start
    size = page.stat().st_size
    # Messages share MESSAGE_BUDGET characters, full texts TEXT_BUDGET; the rest is small.
    assert size < MESSAGE_BUDGET + TEXT_BUDGET + 15_000_000, size
    embedded = re.search(r'type="application/json">(.*?)</script>', page.read_text(encoding="utf-8"), re.S)
    assert embedded is not None
    data = json.loads(embedded.group(1))
    assert data["counts"]["trajectories"] == count
    limits = data["limits"]
    assert limits["texts_cut"] + limits["texts_left_out"] == 30 * 64 and limits["text"] == TEXT_LIMIT
    # The browser opens it and draws a sample of the last problem within its 5 s of virtual time.
    dom = Dom(
        browse(page, fragment(problem="p29", method="pacore:high", sample=63), profile=tmp_path / "profile")
    )
    assert len(dom.find("problem")) == 30
    assert len(dom.find("sample", within=dom.find("method")[0])) == 64
    assert len(dom.find("card")) == 37
    cut = [text_of(m) for m in dom.find("msg") if "cut ..." in text_of(m)]
    indices = [*range(32), *range(4), 0]
    assert len(cut) == 37
    assert all(m.endswith(f"\\boxed{{{(29 + i) % 7}}}") for m, i in zip(cut, indices, strict=True))
    ready = int(next(e for e in dom.elements if e["tag"] == "body")["attrs"]["data-ready-ms"])
    assert ready < 15_000  # from navigation to the first drawing; about 1 s on two shared cores
    print(f"\n70k-trajectory page: {size / 1e6:.1f} MB, written in {written:.1f} s, drawn in {ready} ms")
