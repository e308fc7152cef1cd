"""The ``garrison`` command, run in-process through ``garrison.cli.main``.

``check`` is pure (no actors); ``demo`` runs for real for about two seconds: it is the demo.
Captured output is not a terminal, so both commands print plain text.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from pathlib import Path

import pytest
import structlog

from garrison.cli import main

ESCAPE = re.compile(r"\x1b\[")

VALID = """
[rate_limiting]
per_second = 10
per_minute = 100
strategy = "adaptive"

[circuit_breaker]
failure_threshold = 5
recovery_timeout = 30

[retry]
max_attempts = 3

[timeout]
base_timeout = 30.0

[services.database.circuit_breaker]
failure_threshold = 3

[services.database.bulkhead]
max_workers = 5

[services.search.timeout]
base_timeout = 2.0
adaptive = false

[runtime]
name = "orders-service"
"""


def write(tmp_path: Path, text: str, name: str = "reliability.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- check ------------------------------------------------------------------------------------


def test_check_valid_config_lists_services_stages_and_tree(tmp_path, capsys):
    assert main(["check", str(write(tmp_path, VALID))]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert not ESCAPE.search(out)
    assert "valid" in out
    assert "name = orders-service" in out
    assert "max_restarts = 10  (default)" in out
    for title in ("service 'database'", "service 'search'", "defaults (any other service)"):
        assert title in out
    for stage in ("fallback", "retry", "circuit_breaker", "rate_limiter", "timeout", "bulkhead"):
        assert stage in out
    assert "failure_threshold 3" in out  # the database override
    assert "failure_threshold 5" in out  # the defaults
    assert "max_workers 5" in out
    assert "not configurable from files" in out
    assert "fixed 2s" in out
    # the tree: root -> pipeline:<name> -> stages (innermost started first)
    tree = out[out.index("supervision tree:") :]
    assert "orders-service (root supervisor" in tree
    assert "pipeline:database" in tree
    assert "pipeline:search" in tree
    assert tree.index("bulkhead") < tree.index("retry")


def test_check_stage_order_is_outermost_first(tmp_path, capsys):
    assert main(["check", str(write(tmp_path, VALID))]) == 0
    out = capsys.readouterr().out
    section = out[out.index("service 'database'") : out.index("service 'search'")]
    positions = [
        section.index(f" {stage} ")
        for stage in ("fallback", "retry", "circuit_breaker", "rate_limiter", "timeout", "bulkhead")
    ]
    assert positions == sorted(positions)


def test_check_minimal_config_gets_the_default_pool(tmp_path, capsys):
    assert main(["check", str(write(tmp_path, "[runtime]\nname = 'x'\n"))]) == 0
    out = capsys.readouterr().out
    assert "the default pool" in out
    assert "retry " not in out.split("supervision tree:")[0].split("pipeline:<name>")[1]


def test_check_yaml(tmp_path, capsys):
    pytest.importorskip("yaml")
    text = "retry:\n  max_attempts: 4\nservices:\n  billing:\n    bulkhead:\n      max_workers: 2\n"
    assert main(["check", str(write(tmp_path, text, "c.yaml"))]) == 0
    out = capsys.readouterr().out
    assert "service 'billing'" in out
    assert "max_attempts 4" in out


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            "[services.database.circuit_breaker]\nfailure_threshold = 0\n",
            "services.database.circuit_breaker.failure_threshold",
        ),
        ("[retry]\nmax_atempts = 3\n", "retry"),
        ("[rate_limit]\nper_second = -1\n", "rate_limit.per_second"),
        ("[bogus]\nx = 1\n", "bogus"),
        ("[runtime]\nmax_restarts = -1\n", "runtime.max_restarts"),
        ("[retry\n", "reliability.toml"),
    ],
)
def test_check_invalid_config_exits_2_with_the_key_path(tmp_path, capsys, text, key):
    assert main(["check", str(write(tmp_path, text))]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert key in err
    assert "invalid configuration" in err


def test_check_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert main(["check", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err
    assert str(missing) in err


def test_check_unknown_suffix_and_directory_exit_2(tmp_path, capsys):
    assert main(["check", str(write(tmp_path, "a = 1", "c.ini"))]) == 2
    assert "unknown file type" in capsys.readouterr().err
    assert main(["check", str(tmp_path)]) == 2
    assert "directory" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["demo", "--duration", "0"]) == 2
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out


# -- demo -------------------------------------------------------------------------------------


def test_demo_runs_reports_and_leaves_nothing_behind(tmp_path, capsys):
    config_before = structlog.get_config()
    out_dir = tmp_path / "x"
    assert main(["demo", "--duration", "2", "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert not ESCAPE.search(out + err)
    assert "summary:" in out
    assert "external_api" in out
    assert "database" in out
    assert str(out_dir) in out
    assert "restarted by its supervisor" in out
    # one summary line a second
    assert len(re.findall(r"^\[\s*\d+\.\d+s\] \S", out, re.MULTILINE)) >= 1

    report = json.loads((out_dir / "report.json").read_text(encoding="utf-8"))
    for key in (
        "counts", "pipelines", "timeline", "phases", "events", "injected_restart", "tree",
        "elapsed", "interrupted",
    ):  # fmt: skip
        assert key in report
    assert report["interrupted"] is False
    counts = report["counts"]
    assert counts["calls"] > 0
    assert counts["ok"] > 0
    assert counts["restarts"] >= 1
    assert set(report["pipelines"]) == {"external_api", "database"}
    api = report["pipelines"]["external_api"]
    assert api["stages"] == [
        "fallback", "retry", "circuit_breaker", "rate_limiter", "timeout", "bulkhead",
    ]  # fmt: skip
    assert api["final_status"]["circuit_breaker"]["state"] in ("closed", "half_open", "open")
    assert report["pipelines"]["database"]["stages"] == ["circuit_breaker", "timeout", "bulkhead"]
    assert report["injected_restart"]["restarted"] is True
    assert len(report["timeline"]) >= 4
    assert {"t", "phase", "pipelines"} <= set(report["timeline"][0])

    png = out_dir / "timeline.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert "no plot" in out
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # structlog is configured for the run only
    assert structlog.get_config() == config_before


def test_demo_no_plot(tmp_path, capsys):
    out_dir = tmp_path / "y"
    assert main(["demo", "--duration", "1", "--out", str(out_dir), "--no-plot"]) == 0
    assert "no plot (--no-plot)" in capsys.readouterr().out
    assert (out_dir / "report.json").exists()
    assert not (out_dir / "timeline.png").exists()


def test_demo_stops_cleanly_on_ctrl_c(tmp_path, capsys):
    import _thread  # noqa: PLC0415

    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    try:
        code = main(["demo", "--duration", "20", "--out", str(tmp_path / "z"), "--no-plot"])
    finally:
        timer.cancel()
        timer.join()
    assert code == 130
    out = capsys.readouterr().out
    assert "interrupted" in out
    report = json.loads((tmp_path / "z" / "report.json").read_text(encoding="utf-8"))
    assert report["interrupted"] is True
    assert report["elapsed"] < 10


def test_demo_default_out_is_a_new_timestamped_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--duration", "0.5", "--no-plot"]) == 0
    folders = list(tmp_path.glob("garrison-demo-*"))
    assert len(folders) == 1
    assert (folders[0] / "report.json").exists()
    assert f"output folder: {folders[0]}" in capsys.readouterr().out
