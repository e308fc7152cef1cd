"""One benchmark report: run every benchmarks/bench_*.py, then write REPORT.md and REPORT.png.

``make bench`` runs this. Each bench script writes JSON to benchmarks/results/; this program
runs them one after the other (so they do not compete for the two cores), reads their JSON
and turns it into one table per area: garrison's figure, the peer's figure measured in the
same run, the ratio garrison / peer, the target the earlier issues set (or none) and whether
it is met. The chart (REPORT.png) shows the ratios that have a target, with the target marked.

Usage::

    .venv/bin/python benchmarks/report.py            # full run (~8 minutes), REPORT.md/.png
    .venv/bin/python benchmarks/report.py --quick    # smoke run, REPORT-quick.md/.png
    .venv/bin/python benchmarks/report.py --no-run   # rebuild the report from existing JSON

A script that fails is reported (and makes the exit status 1) but does not stop the others;
its rows, and those of a script that is not there (bench_redis.py needs a redis-server),
read "not measured in this run". Only JSON written during this run is used, unless
``--no-run``. Peers of the ``bench`` extra: pybreaker, circuitbreaker, tenacity, stamina,
limits, pyrate-limiter (``pip install -e '.[dev,all,bench]'``).

Each script's JSON has its own layout, read by one function per area below. New scripts
(bench_redis.py, or any other bench_<name>.py) should write bench_pipeline.py's layout,
which this report reads without new code: ``{"results": {label: {"garrison": x, "peer": y,
"peer_name": "...", "unit": "us", "ratio": x / y, "target": "<= 0.6"}}}`` (``target``
optional; a ``unit`` ending in ``/s`` means higher is better). bench_redis.py's own layout
(``decision_us`` in bench_redis.json) is read as it is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# the scripts in the order they run (others found later run after these, alphabetically)
ORDER = ("ref", "supervision", "breaker", "retry", "rate", "memory", "accuracy", "pipeline")
ORDER += ("http", "redis")
PACKAGES = (
    "garrison",
    "pykka",
    "limits",
    "pyrate-limiter",
    "pybreaker",
    "circuitbreaker",
    "tenacity",
    "stamina",
    "httpx",
    "redis",
    "matplotlib",
)
SCRIPT_TIMEOUT = 1800.0
GIT_STATUS = ("git", "status", "--porcelain", "--untracked-files=no")
NOT_MEASURED = "not measured in this run"


# ------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Target:
    """A target from an earlier issue: ``op`` (``<=`` or ``>=``) ``value``.

    ``on="ratio"`` compares garrison / peer; ``on="measured"`` compares garrison's own figure
    (in the row's unit). ``text`` says it the way the issue does, when that reads better.
    """

    op: str
    value: float
    on: str = "ratio"
    text: str = ""

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"target op must be '<=' or '>=', not {self.op!r}")
        if self.on not in ("ratio", "measured"):
            raise ValueError(f"target on must be 'ratio' or 'measured', not {self.on!r}")

    def met(self, value: float) -> bool:
        return value <= self.value if self.op == "<=" else value >= self.value

    def describe(self, unit: str) -> str:
        if self.text:
            return self.text
        suffix = "x" if self.on == "ratio" else f" {unit}".rstrip()
        return f"{self.op} {self.value:g}{suffix}"


@dataclass(frozen=True)
class Row:
    """One line of a table. ``measured`` is None when the figure is missing from this run."""

    label: str
    measured: float | None
    unit: str
    issue: int
    peer: float | None = None
    peer_name: str = ""
    target: Target | None = None
    lower_is_better: bool = True
    compare: bool = True  # False: no ratio (e.g. counts where the peer may be 0)
    note: str = ""
    headline: str = ""  # a short name when the row is one of the report's headline ratios

    @property
    def ratio(self) -> float | None:
        if not self.compare or self.measured is None or not self.peer:
            return None
        return self.measured / self.peer

    @property
    def met(self) -> bool | None:
        """True/False against the target; None without a target or a figure."""
        if self.target is None:
            return None
        value = self.ratio if self.target.on == "ratio" else self.measured
        return None if value is None else self.target.met(value)


@dataclass
class Area:
    title: str
    intro: str
    rows: list[Row] = field(default_factory=list)


Results = Mapping[str, Any]  # script name ("rate", ...) -> its JSON, absent when not measured


def get(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...``, or None when any step is missing."""
    for step in path:
        if not isinstance(data, Mapping) or step not in data:
            return None
        data = data[step]
    return data


def number(data: Any, *path: str) -> float | None:
    value = get(data, *path)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def percent(share: float | None) -> float | None:
    return None if share is None else share * 100


# ------------------------------------------------------------------------------- the areas

POLICY_TARGET = Target("<=", 1.0, on="measured", text="< 1 us per call")
X3_FASTER = Target("<=", 1 / 3, text=">= 3x faster than limits' moving window")
REF_TARGET = Target("<=", 1.2, text="< 1.2x a bare pykka ask")
REJECTION_TARGET = Target("<=", 1.25)
ALGORITHMS = ("sliding_log", "sliding_window", "gcra")
RATE_PEERS = {  # the nearest peer of each algorithm (the issue's target is vs moving window)
    "sliding_log": "pyrate InMemoryBucket",
    "sliding_window": "limits sliding window counter",
    "gcra": "pyrate StateBucket gcra",
}


def policy_rows(results: Results) -> list[Row]:
    breaker, retry, rate = results.get("breaker"), results.get("retry"), results.get("rate")
    rows: list[Row] = []
    for peer in ("pybreaker.call", "circuitbreaker"):
        key = f"policy decision+record vs {peer}"
        rows.append(
            Row(
                f"breaker policy decision + record vs {peer}",
                number(breaker, "results", key, "garrison_us"),
                "us",
                5,
                number(breaker, "results", key, "peer_us"),
                peer,
                POLICY_TARGET,
                headline="breaker policy vs pybreaker" if peer == "pybreaker.call" else "",
            )
        )
    threads = "4 threads x 5 x 20 ms call, wall ms"
    rows.append(
        Row(
            "breaker, 4 threads x 5 calls of 20 ms (wall time)",
            number(breaker, "results", threads, "garrison_ms"),
            "ms",
            5,
            number(breaker, "results", threads, "peer_ms"),
            "pybreaker, which holds its lock across the call",
        )
    )
    success = "success path (per call)"
    for peer in ("tenacity", "stamina"):
        rows.append(
            Row(
                f"retry success path vs {peer}",
                number(retry, "results", success, "garrison RetryPolicy_us"),
                "us",
                5,
                number(retry, "results", success, f"{peer}_us"),
                peer,
                headline="retry policy vs tenacity" if peer == "tenacity" else "",
            )
        )
    for scenario in ("admit", "reject"):
        for case in ("1 key", "100k keys"):
            table = get(rate, "decision_ns", scenario)
            for algorithm in ALGORITHMS:
                ours = number(table, f"garrison {algorithm}", case, "ns")
                where = f"{scenario}, {case}"
                rows.append(
                    Row(
                        f"rate {algorithm} decision ({where})",
                        ours,
                        "ns",
                        4,
                        number(table, "limits moving window", case, "ns"),
                        "limits moving window",
                        X3_FASTER,
                        headline=(
                            "rate gcra vs limits (100k keys)"
                            if (algorithm, scenario, case) == ("gcra", "admit", "100k keys")
                            else ""
                        ),
                    )
                )
                nearest = RATE_PEERS[algorithm]
                rows.append(
                    Row(
                        f"rate {algorithm} decision ({where})",
                        ours,
                        "ns",
                        4,
                        number(table, nearest, case, "ns"),
                        nearest,
                    )
                )
    return rows


MEMORY_TARGET = Target("<=", 150, on="measured")


def memory_rows(results: Results) -> list[Row]:
    memory = results.get("memory")
    by_count = get(memory, "bytes_per_key") or {}
    count = max(by_count, key=int) if by_count else "100000"
    configs = ("1 window 100/s", "3 windows (seed)")
    rows = []
    for config in configs:
        table = get(by_count, count, config)
        for algorithm in ALGORITHMS:
            for peer in ("limits moving window", "pyrate InMemoryBucket"):
                peer_value = number(table, peer, "bytes_per_key")
                if peer_value is None and table is not None:
                    continue  # limits' three-window row is not measured (see bench_memory.py)
                rows.append(
                    Row(
                        f"{algorithm}, {config}, {int(count):,} keys",
                        number(table, f"garrison {algorithm}", "bytes_per_key"),
                        "B",
                        4,
                        peer_value,
                        peer,
                        MEMORY_TARGET if algorithm != "sliding_log" else None,
                        headline=(
                            "memory per key, gcra vs limits"
                            if (algorithm, config, peer)
                            == ("gcra", configs[0], "limits moving window")
                            else ""
                        ),
                    )
                )
    return rows


ACCURACY_PEERS = ("limits moving window", "pyrate InMemoryBucket")


def accuracy_rows(results: Results) -> list[Row]:
    accuracy = results.get("accuracy")
    runs = get(accuracy, "results") or {
        "default switch interval": None,
        "switch interval 1e-06": None,
    }
    threads = get(accuracy, "threads") or "many"
    rows = []
    for interval, table in runs.items():
        ours = get(table, "garrison sliding_log")
        for peer in ACCURACY_PEERS:
            theirs = get(table, peer)
            errors = get(theirs, "errors")
            raised = "; ".join(f"{error} (x{n})" for error, n in (errors or {}).items())
            note = f"{peer} raised {raised}" if raised else ""
            if get(theirs, "refused_on_busy_lock"):
                refused = f"{peer} refused {theirs['refused_on_busy_lock']:,} calls on a busy lock"
                note = f"{note}; {refused}" if note else refused
            rows += [
                Row(
                    f"share of the allowed count admitted, {threads} threads, {interval}",
                    percent(number(ours, "share_of_allowed")),
                    "%",
                    4,
                    percent(number(theirs, "share_of_allowed")),
                    peer,
                    Target(">=", 99, on="measured"),
                    lower_is_better=False,
                    compare=False,
                    note=note,
                ),
                Row(
                    f"admissions over the limit in any 1 s window, {interval}",
                    number(ours, "overshoot"),
                    "",
                    4,
                    number(theirs, "overshoot"),
                    peer,
                    Target("<=", 0, on="measured", text="0"),
                    compare=False,
                ),
            ]
    return rows


def round_trip_rows(results: Results) -> list[Row]:
    ref, sup, rate = results.get("ref"), results.get("supervision"), results.get("rate")
    retry, breaker = results.get("retry"), results.get("breaker")
    pykka = "bare pykka ask"
    rows = [
        Row(
            "Ref ask round trip",
            number(ref, "results", "ask round trip", "garrison_us"),
            "us",
            3,
            number(ref, "results", "ask round trip", "pykka_us"),
            pykka,
            REF_TARGET,
            headline="Ref ask vs bare pykka",
        ),
        Row(
            "Ref pipelined asks",
            number(ref, "results", "pipelined ask", "garrison_us"),
            "us",
            2,
            number(ref, "results", "pipelined ask", "pykka_us"),
            "bare pykka asks",
        ),
        Row(
            "ask through a supervised child's Ref",
            number(sup, "results", "ask round trip", "supervised_garrison_us"),
            "us",
            3,
            number(sup, "results", "ask round trip", "bare_pykka_us"),
            pykka,
            REF_TARGET,
        ),
    ]
    rate_trips = get(rate, "round_trip_us") or {}
    bare = number(rate_trips, "bare pykka ask, echo actor", "us")
    for label, key in (
        ("rate limiter actor, admitted Execute", "admitted Execute via Ref"),
        ("rate limiter actor, rejected Execute", "rejected Execute via Ref (RateLimited)"),
    ):
        rows.append(Row(label, number(rate_trips, key, "us"), "us", 4, bare, pykka))
    trip = "actor round trip (per ask)"
    rows.append(
        Row(
            "retry actor, Execute round trip",
            number(retry, "results", trip, "retry_actor_us"),
            "us",
            5,
            number(retry, "results", trip, "pykka_ask_us"),
            pykka,
        )
    )
    for label, key, peer in (
        (
            "breaker actor, rejected Execute (open)",
            "rejection: Execute ask (open) vs pykka ask",
            pykka,
        ),
        (
            "breaker handle.call, rejected (open)",
            "rejection: handle.call (open) vs pykka ask",
            pykka,
        ),
        ("breaker handle.call (closed)", "handle.call (closed) vs pybreaker.call", "pybreaker"),
    ):
        rows.append(
            Row(
                label,
                number(breaker, "results", key, "garrison_us"),
                "us",
                5,
                number(breaker, "results", key, "peer_us"),
                peer,
            )
        )
    return rows


def _target_from_text(text: Any) -> Target | None:
    """A target written as ``"<= 1.25"`` / ``">= 0.9"`` by a bench script."""
    if not isinstance(text, str):
        return None
    op, _, value = text.strip().partition(" ")
    try:
        return Target(op, float(value))
    except ValueError:
        return None


def generic_rows(data: Any, issue: int, headlines: Mapping[str, str] | None = None) -> list[Row]:
    """Rows of a script that writes ``results: {label: {garrison, peer, peer_name, unit,
    ratio, target?}}`` (bench_pipeline.py's layout, the one new scripts should use)."""
    rows = []
    for label, row in (get(data, "results") or {}).items():
        if not isinstance(row, Mapping) or "garrison" not in row:
            continue
        unit = str(row.get("unit", ""))
        rows.append(
            Row(
                label,
                number(row, "garrison"),
                unit,
                issue,
                number(row, "peer"),
                str(row.get("peer_name", "")),
                _target_from_text(row.get("target")),
                lower_is_better="/s" not in unit,
                headline=(headlines or {}).get(label, ""),
            )
        )
    return rows


def pipeline_rows(results: Results) -> list[Row]:
    data = results.get("pipeline")
    headline = "throughput: 64 callers, 1 ms ops, bulkhead 32 vs ThreadPoolExecutor(32)"
    rows = generic_rows(data, 6, {headline: "pipeline throughput vs thread pool"})
    if data is None:  # the issue's rows, so that the table says what was not measured
        for label, unit, target, better_low in (
            ("sequential latency: 6-stage pipeline vs 6-actor pykka chain", "us/call", 1.25, 1),
            ("rejection latency: open breaker vs pykka ask", "us/call", 1.25, 1),
            ("rejection latency: rate limited vs pykka ask", "us/call", 1.25, 1),
            (
                "throughput: 64 callers, 1 ms ops, bulkhead 32 vs ThreadPoolExecutor(32)",
                "ops/s",
                0.9,
                0,
            ),
        ):
            op = "<=" if better_low else ">="
            rows.append(Row(label, None, unit, 6, target=Target(op, target)))
    return rows


def http_rows(results: Results) -> list[Row]:
    http = results.get("http")
    endpoints = get(http, "results") or {"/json": None, "/sleep": None}
    threads = get(http, "threads") or 8
    rows = []
    for endpoint, row in endpoints.items():
        rows += [
            Row(
                f"requests/s, {threads} threads, GET {endpoint}",
                number(row, "garrison_rps"),
                "req/s",
                8,
                number(row, "httpx_rps"),
                "httpx.Client",
                Target(">=", 0.85),
                lower_is_better=False,
            ),
            Row(
                f"median latency, GET {endpoint}",
                number(row, "garrison_median_us"),
                "us",
                8,
                number(row, "httpx_median_us"),
                "httpx.Client",
            ),
        ]
    return rows


REDIS_TARGET = Target("<=", 0.6, text="<= 0.6x limits' cost for 3 windows")
PING = "redis PING (redis-py round trip)"


def redis_rows(results: Results) -> list[Row]:
    """bench_redis.py's ``decision_us`` (or the generic layout): each algorithm's decision
    against a raw PING and against limits' moving window on RedisStorage (one ``hit()`` per
    window); issue 9's target on 3 windows against limits."""
    data = results.get("redis")
    if get(data, "results"):  # the generic layout names its own targets
        return generic_rows(data, 9)
    decisions = get(data, "decision_us")
    if data is not None and not isinstance(decisions, Mapping):
        return [Row("bench_redis.json is not in a layout this report reads", None, "", 9)]
    ping = number(decisions, PING)
    rows = []
    for algorithm in ALGORITHMS:
        for windows in ("1 window", "3 windows"):
            ours = number(decisions, f"garrison {algorithm}, {windows}")
            three = windows == "3 windows"
            peer = "limits moving window" + (", 3 hits" if three else "")
            label = f"{algorithm} decision, {windows}"
            rows += [
                Row(label, ours, "us", 9, ping, "raw PING"),
                Row(
                    label,
                    ours,
                    "us",
                    9,
                    number(decisions, f"limits moving window, {windows}"),
                    peer,
                    REDIS_TARGET if three else None,
                    headline="Redis, 3 windows vs limits"
                    if three and algorithm == ALGORITHMS[0]
                    else "",
                ),
            ]
        prefix = f"garrison {algorithm}, 3 windows, batched"  # "... batched by 32"
        batched = next((key for key in decisions or {} if key.startswith(prefix)), None)
        rows.append(
            Row(
                f"{algorithm} decision, 3 windows, batched (a deep queue)",
                number(decisions, batched) if batched else None,
                "us",
                9,
                number(decisions, "limits moving window, 3 windows"),
                "limits moving window, 3 hits",
            )
        )
    return rows


def restart_rows(results: Results) -> list[Row]:
    sup = results.get("supervision")
    rows = []
    for stat, label in (("median_us", "median"), ("p99_us", "p99")):
        rows.append(
            Row(
                f"restart latency (crash to first reply of the new incarnation), {label}",
                number(sup, "restart_latency", "garrison", stat),
                "us",
                3,
                number(sup, "restart_latency", "plain", stat),
                "plain pykka child, same supervisor",
            )
        )
    return rows


AREAS: tuple[tuple[str, str, Callable[[Results], list[Row]]], ...] = (
    (
        "Pure policy costs",
        "Per decision, no actor: garrison's pure policies against the peers' calls "
        "(bench_breaker.py, bench_retry.py, bench_rate.py; rate decisions on a simulated "
        "clock, see bench_rate.py for the scenarios).",
        policy_rows,
    ),
    (
        "Memory per key",
        "Bytes per rate-limit key after that many distinct keys, one call each "
        "(tracemalloc; bench_memory.py).",
        memory_rows,
    ),
    (
        "Limiter accuracy",
        "Threads hammering one key limited to 100/s on the real clock; decisions taken at each "
        "limiter's own clock reading (bench_accuracy.py). Share: admitted / what an exact "
        "limiter could admit at those decision times.",
        accuracy_rows,
    ),
    (
        "Actor round trips vs bare pykka",
        "A blocking ask through garrison against a bare pykka ask to an echo actor, same run "
        "(bench_ref.py, bench_supervision.py, bench_rate.py, bench_retry.py, bench_breaker.py).",
        round_trip_rows,
    ),
    (
        "Pipelines vs bare peers",
        "Full pipelines against a pykka chain, one pykka ask, a ThreadPoolExecutor and "
        "pybreaker (bench_pipeline.py).",
        pipeline_rows,
    ),
    (
        "HTTP client vs httpx",
        "rt.http_client against one shared httpx.Client, local uvicorn server in a child "
        "process (bench_http.py).",
        http_rows,
    ),
    (
        "Redis decisions",
        "One rate-limit decision in Redis against limits' RedisStorage and a raw PING "
        "(bench_redis.py).",
        redis_rows,
    ),
    (
        "Supervisor restart latency",
        "A supervised child crashed by a message; the time until the new incarnation answers "
        "(bench_supervision.py).",
        restart_rows,
    ),
)


def build_areas(results: Results) -> list[Area]:
    areas = [Area(title, intro, rows(results)) for title, intro, rows in AREAS]
    known = set(ORDER)
    for name in sorted(set(results) - known):  # a new script in the generic layout
        rows = generic_rows(results[name], 10)
        if rows:
            areas.append(Area(f"Other: bench_{name}.py", "", rows))
    return areas


# ------------------------------------------------------------------------------- formatting


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100 or value == 0:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def figure(value: float | None, unit: str) -> str:
    if value is None:
        return NOT_MEASURED
    if not unit and value == int(value):  # a count
        return f"{value:,.0f}"
    return f"{_number(value)} {unit}".rstrip()


WORDS = {"us": ("faster", "slower"), "ns": ("faster", "slower"), "ms": ("faster", "slower")}
WORDS["B"] = ("smaller", "larger")


def ratio_text(row: Row) -> str:
    ratio = row.ratio
    if ratio is None:
        return "-"
    text = f"{ratio:.2f}" if ratio < 10 else f"{ratio:.1f}"
    better, worse = WORDS.get(row.unit.split("/")[0], ("less", "more"))
    if row.lower_is_better and ratio > 0:  # within 5% of parity: the ratio alone
        if ratio <= 1 / 1.05:
            return f"{text} ({1 / ratio:.1f}x {better})"
        return f"{text} ({ratio:.1f}x {worse})" if ratio >= 1.05 else text
    return text


def target_text(row: Row) -> str:
    if row.target is None:
        return f"none (#{row.issue} reports it)"
    return f"{row.target.describe(row.unit)} (#{row.issue})"


def met_text(row: Row) -> str:
    met = row.met
    if row.target is None:
        return ""
    if met is None:
        return "-"
    return "met" if met else "**MISSED**"


def table(rows: Iterable[Row]) -> list[str]:
    lines = [
        "| Measurement | garrison | peer | garrison / peer | target | met |",
        "|---|---:|---|---:|---|---|",
    ]
    for row in rows:
        peer = figure(row.peer, row.unit) if row.peer_name else ""
        if row.peer_name:
            peer = f"{peer} ({row.peer_name})" if row.peer is not None else row.peer_name
        label = f"{row.label}<br>*{row.note}*" if row.note else row.label
        lines.append(
            f"| {label} | {figure(row.measured, row.unit)} | {peer} | {ratio_text(row)} "
            f"| {target_text(row)} | {met_text(row)} |"
        )
    return lines


def git_commit() -> str:
    """The checkout's commit, and whether its code (not the reports) differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
        )
        dirty = subprocess.run(
            [*GIT_STATUS, "src", "benchmarks", ":(exclude)benchmarks/results"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


@dataclass
class Run:
    """What happened when the scripts ran."""

    command: str
    quick: bool
    started: datetime.datetime
    scripts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> status, seconds
    load: list[tuple[float, ...]] = field(default_factory=list)
    commit: str = field(default_factory=git_commit)  # when the run starts


def machine() -> list[tuple[str, str]]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        first = meminfo.read_text().splitlines()[0].split()
        memory = f"{int(first[1]) / 1024 / 1024:.1f} GiB"
    return [
        ("System", platform.platform()),
        ("CPU", f"{cpu}, {os.cpu_count()} logical cores"),
        ("Memory", memory or "unknown"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
    ]


def packages() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def row_title(row: Row) -> str:
    if not row.peer_name or " vs " in row.label:
        return row.label
    return f"{row.label} vs {row.peer_name}"


def targeted(areas: list[Area]) -> list[tuple[Area, Row]]:
    """Rows with a target, each claim once (a figure compared with two peers is one claim)."""
    seen: dict[tuple[Any, ...], tuple[Area, Row]] = {}
    for area in areas:
        for row in area.rows:
            if row.target is None:
                continue
            on_ratio = row.target.on == "ratio"
            key = (area.title, row.label, row.measured, row.target, on_ratio and row.peer_name)
            seen.setdefault(key, (area, row))
    return list(seen.values())


def summary(areas: list[Area]) -> list[str]:
    rows = targeted(areas)
    met = [row for _, row in rows if row.met is True]
    missed = [(area, row) for area, row in rows if row.met is False]
    unmeasured = [row for _, row in rows if row.met is None]
    lines = [
        f"{len(rows)} rows have a target: **{len(met)} met, {len(missed)} missed**, "
        f"{len(unmeasured)} not measured in this run.",
        "",
    ]
    heads = [row for area in areas for row in area.rows if row.headline and row.ratio]
    if heads:
        lines.append("Headline ratios (garrison / peer; below 1 means garrison is faster):")
        lines.append("")
        lines += [f"- {row.headline}: {ratio_text(row)} ({row.peer_name})" for row in heads]
        lines.append("")
    if missed:
        lines.append("Targets missed:")
        lines.append("")
        for area, row in missed:
            value = ratio_text(row) if row.target and row.target.on == "ratio" else None
            shown = value or figure(row.measured, row.unit)
            lines.append(f"- {area.title}: {row_title(row)}: {shown}, target {target_text(row)}")
        lines.append("")
    return lines


def markdown(areas: list[Area], run: Run, chart: str | None) -> str:
    date = run.started.strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# garrison benchmark report", ""]
    if run.quick:
        lines += [
            "**Quick smoke run: too few rounds for the figures to mean anything.**",
            "",
        ]
    lines += [
        f"Measured on {date} with `{run.command}`. Every figure on a line was measured in the "
        "same run on the same machine; the ratio is garrison / peer (for times and bytes below "
        "1 is better, for requests or operations per second above 1 is better). The machine "
        "is shared and noisy: absolute times swing 2-4x between runs, the ratios much less.",
        "",
        "## Summary",
        "",
        *summary(areas),
    ]
    if chart:
        lines += [f"![ratios against targets]({chart})", ""]
    lines += ["## Machine and versions", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in machine()]
    lines += [
        f"| Packages | {packages()} |",
        f"| garrison commit | {run.commit} |",
        f"| Date | {date} |",
        f"| Command | `{run.command}` |",
    ]
    if run.load:
        load = " -> ".join(", ".join(f"{x:.2f}" for x in sample) for sample in run.load)
        lines.append(f"| Load average (1, 5, 15 min), start -> end | {load} |")
    lines.append("")
    if run.scripts:
        lines += ["## Scripts", "", "| script | status | seconds |", "|---|---|---:|"]
        for name, info in run.scripts.items():
            lines.append(f"| bench_{name}.py | {info['status']} | {info.get('seconds', '')} |")
        for name in ORDER:
            if name not in run.scripts:
                lines.append(f"| bench_{name}.py | not in this checkout: {NOT_MEASURED} | |")
        lines.append("")
    for area in areas:
        lines += [f"## {area.title}", ""]
        if area.intro:
            lines += [area.intro, ""]
        lines += [*table(area.rows), ""]
    return "\n".join(lines)


def _colour(row: Row) -> str:
    if row.target is None or row.target.on != "ratio":
        return "#9e9e9e"
    return "#2e7d32" if row.met else "#c62828"


def draw_chart(areas: list[Area], path: Path) -> bool:
    """A horizontal bar per ratio that has a target (log scale), the target marked."""
    rows = [
        (area.title, row)
        for area in areas
        for row in area.rows
        if row.ratio is not None
        and ((row.target is not None and row.target.on == "ratio") or row.headline)
    ]
    if not rows:
        return False
    import matplotlib  # noqa: PLC0415  (only when drawing)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    height = 1.4 + 0.28 * len(rows)
    fig, ax = plt.subplots(figsize=(12, height))
    labels, ratios, colours = [], [], []
    for _, row in rows:
        label = row_title(row)
        labels.append(label if len(label) <= 80 else label[:79] + "…")
        ratios.append(row.ratio)
        colours.append(_colour(row))
    positions = list(range(len(rows)))[::-1]
    ax.barh(positions, ratios, color=colours, height=0.6)
    for y, (_, row) in zip(positions, rows, strict=True):
        if row.target is not None and row.target.on == "ratio":
            ax.plot([row.target.value] * 2, [y - 0.4, y + 0.4], color="black", linewidth=2)
        ax.text(row.ratio or 0, y, f" {row.ratio:.2f}", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel(
        "garrison / peer (log scale). Black tick: the target; green met, red missed, "
        "grey: no target on the ratio"
    )
    ax.set_title("garrison against its peers, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------- running


def scripts() -> list[tuple[str, Path]]:
    found = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    names = [name for name in ORDER if name in found]
    names += sorted(set(found) - set(names))
    return [(name, found[name]) for name in names]


def run_scripts(results_dir: Path, quick: bool, run: Run) -> None:
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, path in scripts():
        argv = [sys.executable, str(path)]
        if quick and '"--quick"' in path.read_text():
            argv.append("--quick")
        print(f"== {' '.join([path.name, *argv[2:]])}", flush=True)
        start = time.perf_counter()
        log = logs / f"{name}.log"
        try:
            with log.open("w") as out:
                done = subprocess.run(
                    argv,
                    cwd=HERE.parent,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=SCRIPT_TIMEOUT,
                    check=False,
                )
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"failed (timeout after {SCRIPT_TIMEOUT:.0f} s)"
        seconds = round(time.perf_counter() - start, 1)
        if status != "ok":
            status += f", see results/logs/{name}.log"
        print(f"   {status}, {seconds} s", flush=True)
        run.scripts[name] = {"status": status, "seconds": seconds}


def load_results(results_dir: Path, since: float | None) -> dict[str, Any]:
    """Every ``<name>.json`` in ``results_dir`` (written after ``since``, when given)."""
    results = {}
    for path in sorted(results_dir.glob("*.json")):
        if since is not None and path.stat().st_mtime < since:
            continue
        try:  # bench_redis.py writes bench_redis.json, the others <name>.json
            results[path.stem.removeprefix("bench_")] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            print(f"ignoring {path}: {error}", file=sys.stderr)
    return results


def write_report(results: Results, run: Run, results_dir: Path) -> Path:
    """REPORT.md and REPORT.png (REPORT-quick.* for a quick run) in ``results_dir``."""
    stem = "REPORT-quick" if run.quick else "REPORT"
    areas = build_areas(results)
    png = results_dir / f"{stem}.png"
    chart = png.name if draw_chart(areas, png) else None
    out = results_dir / f"{stem}.md"
    out.write_text(markdown(areas, run, chart) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--no-run", action="store_true", help="only rebuild from existing JSON")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON in, report out")
    parser.add_argument("--command", default="", help="the command to name in the report")
    args = parser.parse_args(argv)
    command = args.command or shlex.join(
        ["python", "benchmarks/report.py", *(argv or sys.argv[1:])]
    )
    run = Run(command, args.quick, datetime.datetime.now(datetime.UTC))
    args.results.mkdir(parents=True, exist_ok=True)
    since = None
    if not args.no_run:
        since = time.time()
        run.load.append(os.getloadavg())
        run_scripts(args.results, args.quick, run)
        run.load.append(os.getloadavg())
    results = load_results(args.results, since)
    out = write_report(results, run, args.results)
    print(f"written to {out}")
    failed = [name for name, info in run.scripts.items() if info["status"] != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
