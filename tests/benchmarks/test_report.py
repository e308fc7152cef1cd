"""benchmarks/report.py on small fixture JSON files (never the real, slow benchmarks).

The fixtures in ``fixtures/`` hold made-up figures chosen so that every kind of row shows up:
targets met and missed, on a ratio and on garrison's own figure, peers better and worse,
a JSON missing (``retry``, ``http``: "not measured in this run"), bench_redis.py's own file
name and layout, accuracy notes, a script in the generic layout. Running the scripts is tested with
two tiny bench scripts in a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "garrison_bench_report", ROOT / "benchmarks/report.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


report = load_report()


@pytest.fixture
def results(tmp_path: Path) -> Path:
    for path in FIXTURES.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def build(results: Path) -> str:
    assert report.main(["--no-run", "--results", str(results), "--command", "make bench"]) == 0
    return (results / "REPORT.md").read_text()


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_a_ratio_row_names_peer_ratio_target_and_met(results: Path) -> None:
    text = build(results)
    rows = section(text, "Actor round trips vs bare pykka")
    assert (
        "| Ref ask round trip | 10.0 us | 20.0 us (bare pykka ask) | 0.50 (2.0x faster) "
        "| < 1.2x a bare pykka ask (#3) | met |"
    ) in rows
    assert (
        "| ask through a supervised child's Ref | 13.0 us | 10.0 us (bare pykka ask) "
        "| 1.30 (1.3x slower) | < 1.2x a bare pykka ask (#3) | **MISSED** |"
    ) in rows
    assert (
        "| Ref pipelined asks | 3.00 us | 6.00 us (bare pykka asks) | 0.50 (2.0x faster) " in rows
    )
    assert "| none (#2 reports it) |  |" in rows


def test_targets_on_garrison_s_own_figure(results: Path) -> None:
    text = build(results)
    policy = section(text, "Pure policy costs")
    assert (
        "| 0.30 us | 1.20 us (pybreaker.call) | 0.25 (4.0x faster) | < 1 us per call (#5) | met |"
        in (policy)
    )
    assert (
        "| 1.50 us | 0.50 us (circuitbreaker) | 3.00 (3.0x slower) | < 1 us per call (#5) "
        in policy
    )
    memory = section(text, "Memory per key")
    # the largest key count is the one reported; 160 B misses the 150 B target
    assert "| gcra, 1 window 100/s, 100,000 keys | 115 B | 460 B (limits moving window) " in memory
    assert "999" not in memory
    assert (
        "| sliding_window, 1 window 100/s, 100,000 keys | 160 B | 460 B (limits moving window)"
        in (memory)
    )
    assert "| 0.35 (2.9x smaller) | <= 150 B (#4) | **MISSED** |" in memory
    assert "| sliding_log, 1 window 100/s, 100,000 keys | not measured in this run |" in memory


def test_rate_decisions_against_limits_moving_window(results: Path) -> None:
    policy = section(build(results), "Pure policy costs")
    target = ">= 3x faster than limits' moving window (#4)"
    assert (
        f"| rate gcra decision (admit, 1 key) | 100 ns | 1,000 ns (limits moving window) "
        f"| 0.10 (10.0x faster) | {target} | met |"
    ) in policy
    assert (
        f"| rate gcra decision (admit, 100k keys) | 200 ns | 400 ns (limits moving window) "
        f"| 0.50 (2.0x faster) | {target} | **MISSED** |"
    ) in policy
    assert "| 100 ns | 500 ns (pyrate StateBucket gcra) | 0.20 (5.0x faster) | none (#4" in policy
    assert "| rate gcra decision (reject, 1 key) | not measured in this run |" in policy


def test_accuracy_rows_in_percent_with_notes(results: Path) -> None:
    rows = section(build(results), "Limiter accuracy")
    assert (
        "| share of the allowed count admitted, 16 threads, default switch interval<br>"
        "*limits moving window raised KeyError: 'client' (x2)* | 100 % "
        "| 99.5 % (limits moving window) | - | >= 99 % (#4) | met |"
    ) in rows
    assert "*pyrate InMemoryBucket refused 1,234 calls on a busy lock* | 100 % | 90.0 %" in rows
    assert (
        "| admissions over the limit in any 1 s window, default switch interval | 0 "
        "| 3 (limits moving window) | - | 0 (#4) | met |"
    ) in rows


def test_generic_rows_keep_the_script_s_targets(results: Path) -> None:
    rows = section(build(results), "Pipelines vs bare peers")
    assert (
        "| sequential latency: 6-stage pipeline vs 6-actor pykka chain | 300 us/call "
        "| 150 us/call (pykka chain x6) | 2.00 (2.0x slower) | <= 1.25x (#6) | **MISSED** |"
    ) in rows
    assert (
        "| 23,000 ops/s | 25,000 ops/s (ThreadPoolExecutor(32)) | 0.92 | >= 0.9x (#6) | met |"
        in (rows)
    )
    assert "| 0.40 | none (#6 reports it) |  |" in rows


def test_redis_decisions_against_ping_and_limits(results: Path) -> None:
    rows = section(build(results), "Redis decisions")
    target = "<= 0.6x limits' cost for 3 windows (#9)"
    assert (
        "| sliding_log decision, 3 windows | 140 us | 280 us (limits moving window, 3 hits) "
        f"| 0.50 (2.0x faster) | {target} | met |"
    ) in rows
    assert (
        "| gcra decision, 3 windows | 200 us | 280 us (limits moving window, 3 hits) "
        f"| 0.71 (1.4x faster) | {target} | **MISSED** |"
    ) in rows
    assert (
        "| sliding_log decision, 1 window | 100 us | 50.0 us (raw PING) | 2.00 (2.0x slower) "
        "| none (#9 reports it) |" in rows
    )
    assert "| sliding_log decision, 3 windows, batched (a deep queue) | 20.0 us | 280 us " in rows
    assert "| sliding_window decision, 3 windows | not measured in this run | 280 us " in rows


def test_missing_json_reads_not_measured(results: Path) -> None:
    (results / "bench_redis.json").unlink()
    text = build(results)
    redis = section(text, "Redis decisions")
    assert (
        "| sliding_log decision, 3 windows | not measured in this run "
        "| limits moving window, 3 hits | - | <= 0.6x limits' cost for 3 windows (#9) | - |"
    ) in redis
    http = section(text, "HTTP client vs httpx")
    assert (
        "| requests/s, 8 threads, GET /json | not measured in this run | httpx.Client | - " in http
    )
    assert "| retry success path vs tenacity | not measured in this run | tenacity |" in text


def test_summary_counts_and_lists_missed_targets(results: Path) -> None:
    summary = section(build(results), "Summary")
    missed = summary.split("Targets missed:")[1]
    assert (
        "- Pipelines vs bare peers: sequential latency: 6-stage pipeline vs 6-actor pykka chain: "
        "2.00 (2.0x slower), target <= 1.25x (#6)" in missed
    )
    assert (
        "- Memory per key: sliding_window, 1 window 100/s, 100,000 keys "
        "vs limits moving window: 160 B" in missed
    )
    # each claim once: the memory and accuracy figures compared with two peers count once
    assert "29 rows have a target: **8 met, 6 missed**, 15 not measured in this run." in summary
    assert missed.count("\n- ") == 6
    assert "- Ref ask vs bare pykka: 0.50 (2.0x faster) (bare pykka ask)" in summary


def test_machine_versions_command_and_chart(results: Path) -> None:
    text = build(results)
    machine = section(text, "Machine and versions")
    assert "| Command | `make bench` |" in machine
    assert "| Python | CPython " in machine
    assert "pykka " in machine
    assert "garrison " in machine
    assert "![ratios against targets](REPORT.png)" in text
    assert (results / "REPORT.png").read_bytes().startswith(b"\x89PNG")


def test_a_bad_target_is_refused() -> None:
    with pytest.raises(ValueError, match="target op"):
        report.Target("<", 1.0)
    with pytest.raises(ValueError, match="target on"):
        report.Target("<=", 1.0, on="peer")


SCRIPT_OK = """
import json, sys
from pathlib import Path
quick = "--quick" in sys.argv[1:]
rows = {"widget latency vs bare widget": {"garrison": 2.0, "peer": 4.0, "peer_name": "bare widget",
        "unit": "us", "ratio": 0.5, "target": "<= 1.0"}}
out = Path(sys.argv[0]).parent / "results" / "widget.json"
out.write_text(json.dumps({"quick": quick, "results": rows}))
"""
SCRIPT_FAILS = "import sys\nprint('boom')\nsys.exit(3)\n"


def test_running_scripts_quick_with_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = tmp_path / "benchmarks"
    out = bench / "results"
    out.mkdir(parents=True)
    (bench / "bench_widget.py").write_text(SCRIPT_OK)
    (bench / "bench_broken.py").write_text(SCRIPT_FAILS)
    stale = out / "ref.json"  # from an earlier run: not used
    shutil.copy(FIXTURES / "ref.json", stale)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    monkeypatch.setattr(report, "HERE", bench)

    assert report.main(["--quick", "--results", str(out)]) == 1  # bench_broken.py failed
    assert json.loads((out / "widget.json").read_text())["quick"] is True  # --quick passed on
    assert not (out / "REPORT.md").exists()
    text = (out / "REPORT-quick.md").read_text()
    assert "**Quick smoke run" in text
    assert "| bench_broken.py | failed (exit 3), see results/logs/broken.log |" in text
    assert "| bench_widget.py | ok |" in text
    assert "| bench_rate.py | not in this checkout: not measured in this run | |" in text
    assert (out / "logs" / "broken.log").read_text() == "boom\n"
    assert (
        "| widget latency vs bare widget | 2.00 us | 4.00 us (bare widget) | 0.50 (2.0x faster) "
        "| <= 1x (#10) | met |"
    ) in section(text, "Other: bench_widget.py")
    assert "| Ref ask round trip | not measured in this run |" in text  # the stale JSON
