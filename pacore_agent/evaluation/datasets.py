"""Benchmark problems: the named benchmarks, where their files live, and their download.

Any JSONL file with ``id``, ``problem`` and ``answer`` on every line (plus ``tests`` for code) loads
with `load_jsonl` (`pacore_agent.evaluation.problems`, re-exported here with `Problem`). The named benchmarks (`BENCHMARKS`) load with `load_benchmark`, which takes the
first of these that exists:

1. ``data=``: a JSONL file;
2. ``data_dir=``: a directory holding the benchmark's standard file name (an error when it is missing);
3. `default_data_dir()`: ``$PACORE_DATA_DIR``, else a ``shared/data`` directory found upward from the
   working directory;
4. the download cache (`default_cache_dir()`, ``~/.cache/pacore/datasets``);
5. a download of the public copy (Hugging Face hub, GitHub raw), with the standard library only, which
   is written to the cache in the same JSONL format, so the cache directory is itself a data directory.

Offline machines get a `DatasetUnavailableError` that says to pass ``--data PATH`` or set
``PACORE_DATA_DIR``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import pickle
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pacore_agent.evaluation.problems import (
    CodeTest,
    DatasetFormatError,
    Domain,
    Problem,
    load_jsonl,
    write_jsonl,
)
from pacore_agent.exceptions import ConfigurationError, UsageError

__all__ = [
    "BENCHMARKS",
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "LIVECODEBENCH_SUBSET_IDS",
    "Benchmark",
    "CodeTest",
    "DatasetFormatError",
    "DatasetUnavailableError",
    "Domain",
    "Endpoints",
    "Problem",
    "default_cache_dir",
    "default_data_dir",
    "get_benchmark",
    "load_benchmark",
    "load_jsonl",
    "write_jsonl",
]


DATA_DIR_ENV = "PACORE_DATA_DIR"
"""Environment variable naming a directory that holds the benchmark files."""

CACHE_DIR_ENV = "PACORE_CACHE_DIR"
"""Environment variable overriding the download cache directory."""

DEFAULT_TIMEOUT_S = 60.0
"""Seconds to wait on each download connection or read."""

_OFFLINE_ENV = "HF_HUB_OFFLINE"


class DatasetUnavailableError(ConfigurationError):
    """A named benchmark has no local copy and could not be downloaded (offline, or an unexpected file).

    The message says how to supply a local copy: ``--data PATH`` or ``PACORE_DATA_DIR``.
    """


# --------------------------------------------------------------------------------------------------
# Where files live


def default_data_dir(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory holding the benchmark files, when there is one.

    ``$PACORE_DATA_DIR`` when set; otherwise the first ``shared/data`` directory found in ``start`` (a
    directory, or a file's directory; default: the working directory) or any of its parents.

    Args:
        start: Where the upward search begins.

    Returns:
        The directory, or ``None`` when neither applies.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    here = Path(start).resolve() if start is not None else Path.cwd()
    if here.is_file():
        here = here.parent
    for directory in (here, *here.parents):
        candidate = directory / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def default_cache_dir() -> Path:
    """Where downloaded benchmarks are kept.

    ``$PACORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/pacore/datasets``, else ``~/.cache/pacore/datasets``.
    """
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pacore" / "datasets"


# --------------------------------------------------------------------------------------------------
# Named benchmarks


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@dataclass(frozen=True)
class Endpoints:
    """Where downloads come from: the public hosts, a mirror, or a loopback server in tests.

    Attributes:
        hub: The Hugging Face hub (``$HF_ENDPOINT`` when set), for raw dataset files.
        rows: The Hugging Face dataset viewer API, which serves parquet-only datasets as JSON rows.
        github_raw: Raw GitHub file contents.
        timeout_s: Seconds to wait on each connection or read.
    """

    hub: str = field(default_factory=_hf_endpoint)
    rows: str = "https://datasets-server.huggingface.co"
    github_raw: str = "https://raw.githubusercontent.com"
    timeout_s: float = DEFAULT_TIMEOUT_S


Fetcher = Callable[[Endpoints], list[Problem]]


@dataclass(frozen=True)
class Benchmark:
    """A named benchmark: its standard file name and where its public copy lives.

    Attributes:
        name: The name `load_benchmark` takes.
        filename: The standard file name in a data directory or the cache.
        domain: ``"math"`` or ``"code"``.
        size: Problems in the full benchmark.
        title: A human-readable title.
        origin: Where the download comes from.
        fetch: Downloads the public copy and maps it to problems.
    """

    name: str
    filename: str
    domain: Domain
    size: int
    title: str
    origin: str
    fetch: Fetcher = field(repr=False, compare=False)


def get_benchmark(name: str) -> Benchmark:
    """Look a benchmark up by name (case and ``-``/``_`` insensitive; a few aliases are accepted).

    Args:
        name: ``aime2025``, ``hmmt2025``, ``imo_answerbench`` (v2), ``imo_answerbench_v1`` or
            ``livecodebench``.

    Raises:
        UsageError: The name is unknown; the message lists the known ones.
    """
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        known = ", ".join(BENCHMARKS)
        raise UsageError(
            f"unknown benchmark {name!r}: known benchmarks are {known} "
            "(any other JSONL file loads with load_jsonl / --data PATH)"
        )
    return BENCHMARKS[key]


def load_benchmark(
    name: str,
    *,
    data: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    endpoints: Endpoints | None = None,
) -> list[Problem]:
    """Load a named benchmark from a local file, the cache, or (on first use) its public copy.

    The module docstring gives the order in which sources are tried. A download is written to the
    cache, so later calls do not need the network.

    Args:
        name: The benchmark (see `get_benchmark`).
        data: A JSONL file to read instead of the standard copy (a directory counts as ``data_dir``).
        data_dir: A directory holding the standard file name (`Benchmark.filename`).
        cache_dir: The download cache; default `default_cache_dir()`.
        download: Whether a missing benchmark may be downloaded.
        endpoints: Where downloads come from; default the public hosts.

    Returns:
        The problems, in the benchmark's order.

    Raises:
        UsageError: The name is unknown.
        DatasetFormatError: A local file has a bad line.
        DatasetUnavailableError: There is no local copy and the download failed or is disabled
            (``download=False`` or ``HF_HUB_OFFLINE=1``).
        FileNotFoundError: ``data`` or ``data_dir``'s file does not exist.
    """
    bench = get_benchmark(name)
    if data is not None and Path(data).is_dir():
        data, data_dir = None, data
    if data is not None:
        return load_jsonl(data, domain=bench.domain)
    if data_dir is not None:
        path = Path(data_dir) / bench.filename
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {bench.name} file in the data directory {data_dir}")
        return load_jsonl(path, domain=bench.domain)
    found = default_data_dir()
    if found is not None and (found / bench.filename).is_file():
        return load_jsonl(found / bench.filename, domain=bench.domain)
    cached = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (cached / bench.filename).is_file():
        return load_jsonl(cached / bench.filename, domain=bench.domain)
    if not download or os.environ.get(_OFFLINE_ENV, "").lower() in ("1", "true", "yes", "on"):
        why = "downloads are disabled" + ("" if not download else f" ({_OFFLINE_ENV} is set)")
        raise DatasetUnavailableError(_unavailable_message(bench, why))
    try:
        problems = bench.fetch(endpoints or Endpoints())
    except _DownloadError as exc:
        raise DatasetUnavailableError(_unavailable_message(bench, str(exc))) from exc
    write_jsonl(cached / bench.filename, problems)
    return problems


def _unavailable_message(bench: Benchmark, why: str) -> str:
    return (
        f"benchmark {bench.name!r} has no local copy and could not be downloaded from {bench.origin}: "
        f"{why}. Pass --data PATH (a JSONL file with id, problem, answer per line; data=PATH in Python) "
        f"or set {DATA_DIR_ENV} to a directory holding {bench.filename}."
    )


# --------------------------------------------------------------------------------------------------
# Downloads: plain HTTP GETs with urllib, mapped to problems by small pure functions


class _DownloadError(Exception):
    """A download failed or returned something unexpected (translated to DatasetUnavailableError)."""


def _http_get(url: str, endpoints: Endpoints) -> bytes:
    with _http_open(url, endpoints) as response:
        try:
            body: bytes = response.read()
        except OSError as exc:
            raise _DownloadError(f"{url}: {exc}") from exc
    return body


def _http_lines(url: str, endpoints: Endpoints) -> Generator[bytes, None, None]:
    """Stream a (possibly large) file line by line without keeping it in memory."""
    with _http_open(url, endpoints) as response:
        try:
            yield from response
        except OSError as exc:
            raise _DownloadError(f"{url}: {exc}") from exc


def _http_open(url: str, endpoints: Endpoints) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "pacore-datasets"})
    try:
        return urllib.request.urlopen(request, timeout=endpoints.timeout_s)
    except urllib.error.HTTPError as exc:
        raise _DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise _DownloadError(f"{url}: {exc.reason}") from exc
    except OSError as exc:  # timeouts, resets
        raise _DownloadError(f"{url}: {exc}") from exc


def _json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _DownloadError(f"{url}: not JSON ({exc})") from exc


def _dataset_rows(
    endpoints: Endpoints, dataset: str, *, config: str = "default", split: str = "train"
) -> list[dict[str, Any]]:
    """All rows of a small hub dataset through the dataset viewer's ``/rows`` API (100 rows a page)."""
    rows: list[dict[str, Any]] = []
    while True:
        query = urllib.parse.urlencode(
            {"dataset": dataset, "config": config, "split": split, "offset": len(rows), "length": 100}
        )
        url = f"{endpoints.rows.rstrip('/')}/rows?{query}"
        page = _json(_http_get(url, endpoints), url)
        try:
            batch = [item["row"] for item in page["rows"]]
            total = int(page.get("num_rows_total", len(rows) + len(batch)))
        except (KeyError, TypeError, ValueError) as exc:
            raise _DownloadError(f"{url}: unexpected response ({exc!r})") from exc
        rows.extend(batch)
        if not batch or len(rows) >= total:
            return rows


def _matharena(dataset: str, make_id: Callable[[int], str]) -> Fetcher:
    """MathArena hub datasets: ``problem_idx``, ``problem``, ``answer`` (int or str), ``problem_type``."""

    def fetch(endpoints: Endpoints) -> list[Problem]:
        problems = []
        for row in _dataset_rows(endpoints, dataset):
            try:
                index = int(row["problem_idx"])
                problems.append(
                    Problem(
                        id=make_id(index),
                        problem=str(row["problem"]).strip(),
                        answer=str(row["answer"]).strip(),
                        metadata={
                            "problem_idx": index,
                            "problem_type": row.get("problem_type"),
                            "source": f"hf:{dataset}",
                        },
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise _DownloadError(f"hf:{dataset}: unexpected row ({exc!r})") from exc
        return sorted(problems, key=lambda p: int(p.metadata["problem_idx"]))

    return fetch


def _aime_id(index: int) -> str:
    """MathArena numbers AIME 2025 I and II as 1-30; the shipped file says ``aime2025_I_7``/``II_7``."""
    return f"aime2025_I_{index}" if index <= 15 else f"aime2025_II_{index - 15}"


_IMO_COMMIT = "a02069ef66dbae4c5b0713ba0dc144a35375558f"
_IMO_CSV = {"v2": "imobench/answerbench_v2.csv", "v1": "imobench/answerbench.csv"}
_IMO_ANSWER_FIXES = {
    "imo-bench-geometry-004": ("45752", "4, 5", "a spreadsheet date-serial corruption (45752 = 2025-04-05)"),
    "imo-bench-geometry-096": ("$\\frac{7}{18}", "$\\frac{7}{18}$", "the closing $ was missing"),
}
"""Known corrupt answers in the v2 CSV: (as found, restored, why); see shared/data/README.md."""


def _imo_answerbench(version: Literal["v1", "v2"]) -> Fetcher:
    def fetch(endpoints: Endpoints) -> list[Problem]:
        base = endpoints.github_raw.rstrip("/")
        url = f"{base}/google-deepmind/superhuman/{_IMO_COMMIT}/{_IMO_CSV[version]}"
        try:
            text = _http_get(url, endpoints).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _DownloadError(f"{url}: not UTF-8 ({exc})") from exc
        return _map_imo_csv(text, source=f"google-deepmind/superhuman:{_IMO_CSV[version]}@{_IMO_COMMIT}")

    return fetch


def _map_imo_csv(text: str, *, source: str) -> list[Problem]:
    """IMO-AnswerBench CSV columns: Problem ID, Problem, Short Answer, Category, Subcategory, Source."""
    problems = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            fields, note = _repair_imo_row(row)
            problems.append(
                Problem(
                    id=fields["Problem ID"].strip(),
                    problem=fields["Problem"].strip(),
                    answer=fields["Short Answer"].strip(),
                    metadata={
                        "category": fields["Category"].strip(),
                        "subcategory": fields["Subcategory"].strip(),
                        "competition": fields["Source"].strip(),
                        "source": source,
                        **({"repair_note": note} if note else {}),
                    },
                )
            )
        except (KeyError, AttributeError) as exc:
            raise _DownloadError(f"{source}: unexpected row {row!r}") from exc
    return problems


def _repair_imo_row(row: Mapping[str, str | None]) -> tuple[dict[str, str], str | None]:
    """Undo the formatting corruptions found in the upstream v2 CSV (each fix applies only where found)."""
    fields = {k: v for k, v in row.items() if isinstance(k, str) and v is not None}
    notes = []
    if row.get("Source") is None and "\n," in fields.get("Problem", ""):
        # An unclosed quote swallowed the answer into the problem; the later columns shifted left.
        problem, answer = fields["Problem"].rsplit("\n,", 1)
        shifted = (fields["Short Answer"], fields["Category"], fields["Subcategory"])
        fields["Category"], fields["Subcategory"], fields["Source"] = shifted
        fields["Problem"], fields["Short Answer"] = problem, answer.rstrip('"')
        notes.append("upstream CSV row malformed (missing closing quote); fields re-split")
    problem = fields.get("Problem", "").strip()
    if len(problem) > 1 and problem[0] == problem[-1] == '"' and '""' in problem:
        fields["Problem"] = problem[1:-1].replace('""', '"')
        notes.append("upstream CSV field was double-escaped; unescaped")
    fix = _IMO_ANSWER_FIXES.get(fields.get("Problem ID", "").strip())
    if fix is not None and fields.get("Short Answer", "").strip() == fix[0]:
        fields["Short Answer"] = fix[1]
        notes.append(f"upstream answer {fix[0]!r} restored to {fix[1]!r}: {fix[2]}")
    return fields, "; ".join(notes) or None


LIVECODEBENCH_SUBSET_IDS: tuple[str, ...] = (
    "abc365_a", "abc365_d", "arc181_b", "abc366_b", "abc366_f", "arc182_d", "abc367_b", "abc367_f",
    "abc368_b", "abc368_e", "arc183_b", "abc369_b", "abc369_e", "abc370_d", "abc370_g", "abc371_c",
    "abc371_g", "abc372_d", "abc372_g", "abc373_a", "abc373_e", "abc374_b", "abc374_g", "abc375_d",
    "abc375_g", "abc376_a", "abc376_d", "abc376_g", "abc377_c", "abc377_g", "arc186_c", "abc378_a",
    "abc378_e", "abc379_a", "abc379_d", "abc380_a", "abc380_d", "abc380_g", "abc381_c", "arc188_a",
    "arc188_d", "abc382_d", "abc383_a", "abc383_d", "arc189_c", "abc384_b", "abc384_e", "abc385_b",
    "abc385_e", "abc386_c",
)  # fmt: skip
"""The 50 LiveCodeBench problems of the ``livecodebench`` benchmark (AtCoder, stdin, 2024-08 .. 2024-12;
selected as shared/data/README.md describes)."""

_LCB_DATASET = "livecodebench/code_generation_lite"
_LCB_FILES = ("test4.jsonl", "test5.jsonl", "test3.jsonl", "test6.jsonl")
"""Release files to scan, most likely first: v4 (to 2024-09) and v5 (to 2025-01) hold the subset."""


def _fetch_livecodebench(endpoints: Endpoints) -> list[Problem]:
    """Stream the release files, keeping the subset's rows, with public and private (hidden) tests."""
    wanted = set(LIVECODEBENCH_SUBSET_IDS)
    found: dict[str, Problem] = {}
    for name in _LCB_FILES:
        url = f"{endpoints.hub.rstrip('/')}/datasets/{_LCB_DATASET}/resolve/main/{name}"
        with contextlib.closing(_http_lines(url, endpoints)) as lines:
            for raw in lines:
                if not raw.strip():
                    continue
                row = _json(raw, url)
                question_id = row.get("question_id") if isinstance(row, dict) else None
                if question_id in wanted and question_id not in found:
                    found[question_id] = _map_lcb_row(row, source=f"hf:{_LCB_DATASET}/{name}")
        if len(found) == len(wanted):
            return [found[i] for i in LIVECODEBENCH_SUBSET_IDS]
    missing = sorted(wanted - set(found))
    raise _DownloadError(
        f"{len(missing)} subset problems not found in {_LCB_DATASET}: {', '.join(missing[:5])}"
    )


def _map_lcb_row(row: Mapping[str, Any], *, source: str) -> Problem:
    """LiveCodeBench row: question_id, question_content, public/private_test_cases, contest fields."""
    try:
        tests = _decode_lcb_tests(row["public_test_cases"]) + _decode_lcb_tests(row["private_test_cases"])
        extra = row.get("metadata") or "{}"
        return Problem(
            id=str(row["question_id"]),
            problem=str(row["question_content"]),
            domain="code",
            tests=[
                CodeTest(
                    input=str(t["input"]).replace("\r\n", "\n"),
                    output=str(t["output"]).replace("\r\n", "\n"),
                    testtype=t.get("testtype", "stdin"),
                )
                for t in tests
            ],
            metadata={
                "title": row.get("question_title"),
                "platform": row.get("platform"),
                "contest_id": row.get("contest_id"),
                "contest_date": row.get("contest_date"),
                "difficulty": row.get("difficulty"),
                "starter_code": row.get("starter_code") or "",
                "lcb_metadata": json.loads(extra) if isinstance(extra, str) else extra,
                "test_kind": "public_and_private",
                "source": source,
            },
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise _DownloadError(f"{source}: unexpected row for {row.get('question_id')!r} ({exc!r})") from exc


class _StringsOnlyUnpickler(pickle.Unpickler):
    """LiveCodeBench pickles plain strings; refusing every global makes loading them safe."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _decode_lcb_tests(value: Any) -> list[dict[str, Any]]:
    """Tests are a JSON list, or (private tests) base64 of zlib of a pickled JSON string."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value.strip():
        return []
    if value.lstrip().startswith("["):
        decoded: Any = json.loads(value)
    else:
        try:
            raw = zlib.decompress(base64.b64decode(value))
            decoded = _StringsOnlyUnpickler(io.BytesIO(raw)).load()
        except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(f"undecodable test cases ({exc})") from exc
        if isinstance(decoded, bytes | str):
            decoded = json.loads(decoded)
    if not isinstance(decoded, list):
        raise ValueError("test cases are not a list")
    return decoded


BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType(
    {
        b.name: b
        for b in (
            Benchmark(
                "aime2025",
                "aime2025.jsonl",
                "math",
                30,
                "AIME 2025 (I and II)",
                "hf:MathArena/aime_2025",
                _matharena("MathArena/aime_2025", _aime_id),
            ),
            Benchmark(
                "hmmt2025",
                "hmmt2025_feb.jsonl",
                "math",
                30,
                "HMMT February 2025",
                "hf:MathArena/hmmt_feb_2025",
                _matharena("MathArena/hmmt_feb_2025", lambda index: f"hmmt2025feb_{index}"),
            ),
            Benchmark(
                "imo_answerbench",
                "imo_answerbench.jsonl",
                "math",
                400,
                "IMO-AnswerBench v2",
                f"github:google-deepmind/superhuman/{_IMO_CSV['v2']}",
                _imo_answerbench("v2"),
            ),
            Benchmark(
                "imo_answerbench_v1",
                "imo_answerbench_v1.jsonl",
                "math",
                400,
                "IMO-AnswerBench v1 (deprecated upstream 2026-02-12)",
                f"github:google-deepmind/superhuman/{_IMO_CSV['v1']}",
                _imo_answerbench("v1"),
            ),
            Benchmark(
                "livecodebench",
                "livecodebench_subset.jsonl",
                "code",
                len(LIVECODEBENCH_SUBSET_IDS),
                "LiveCodeBench, 50-problem AtCoder subset",
                f"hf:{_LCB_DATASET}",
                _fetch_livecodebench,
            ),
        )
    }
)
"""The named benchmarks, by name."""

_ALIASES = {
    "hmmt2025_feb": "hmmt2025",
    "hmmt_feb_2025": "hmmt2025",
    "aime_2025": "aime2025",
    "imo_answerbench_v2": "imo_answerbench",
    "livecodebench_subset": "livecodebench",
}
