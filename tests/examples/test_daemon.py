"""``examples/daemon.py`` for real: a subprocess, scraped, worked, drained with SIGTERM.

Also ``garrison status URL`` (in-process, through ``garrison.cli.main``) against the running
daemon and against a closed port. Every wait is bounded; the daemon is killed in a finally.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from garrison.cli import main, pipeline_summary, status_tree_lines, status_url

ROOT = Path(__file__).resolve().parents[2]
DAEMON = ROOT / "examples" / "daemon.py"
DRAIN_TIMEOUT = 8.0
START_TIMEOUT = 15.0

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="SIGTERM and a POSIX event loop signal handler"
)


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    base: str

    def stdout_lines(self) -> list[str]:
        return self.stdout.read_text(encoding="utf-8").splitlines()


def _first_line(path: Path, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(encoding="utf-8")
        if "\n" in text:
            return text.split("\n", 1)[0]
        if process.poll() is not None:
            break
        time.sleep(0.02)
    pytest.fail(f"the daemon printed no first line within {timeout}s (exit {process.poll()})")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, str(DAEMON), "--port", "0", "--drain-timeout", str(DRAIN_TIMEOUT)],
            stdout=out,
            stderr=err,
            cwd=ROOT,
        )
    try:
        line = _first_line(stdout, process, START_TIMEOUT)
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield Daemon(process, stdout, stderr, line.removeprefix("listening on "))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _burst(base: str, proc: subprocess.Popen[bytes], accepted_before: int) -> dict:
    """30 concurrent /work requests (half slow), SIGTERM while the slow ones are in flight,
    then more /work requests once /healthz says the daemon is draining."""
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=20.0, limits=limits) as client:
        bodies = [{"n": i, "delay": 1.0} if i % 2 else {"n": i, "delay": 0.005} for i in range(30)]
        tasks = [asyncio.ensure_future(client.post("/work", json=body)) for body in bodies]

        # Wait (bounded) until the daemon has accepted all 30 and the slow ones are running.
        deadline = time.monotonic() + 5.0
        work: dict = {}
        while time.monotonic() < deadline:
            work = (await client.get("/status")).json()["work"]
            if work["accepted"] == accepted_before + 30 and work["in_flight"] > 0:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail(f"the daemon did not accept the 30 requests in time: {work}")
        in_flight_at_signal = work["in_flight"]
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # Once /healthz turns 503 (or the port is closed), /work must be refused.
        refused_health = None
        while time.monotonic() < signalled + 5.0:
            try:
                health = await client.get("/healthz")
            except httpx.TransportError:
                refused_health = "refused"
                break
            if health.status_code == 503:
                assert health.json() == {"status": "draining"}
                refused_health = 503
                break
            assert health.status_code == 200
            await asyncio.sleep(0.01)
        assert refused_health is not None, "/healthz never reported draining"
        late: list[int | str] = []
        for n in range(5):
            try:
                response = await client.post("/work", json={"n": 1000 + n})
                late.append(response.status_code)
            except httpx.TransportError:
                late.append("refused")
        # the requests in flight were sent before the signal: each must get its answer
        responses = await asyncio.wait_for(asyncio.gather(*tasks), DRAIN_TIMEOUT + 5.0)
    return {
        "bodies": bodies,
        "responses": responses,
        "late": late,
        "in_flight_at_signal": in_flight_at_signal,
        "signalled": signalled,
    }


@pytest.mark.timeout(60)
def test_daemon_serves_scrapes_and_drains_on_sigterm(daemon, capsys):
    base = daemon.base
    with httpx.Client(base_url=base, timeout=10.0) as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}

        # a few operations first: a success and a failure through the pipeline
        done = client.post("/work", json={"n": 21})
        assert done.status_code == 200
        assert done.json()["value"] == 42
        failed = client.post("/work", json={"n": 5, "fail": True})
        assert failed.status_code == 502
        assert "ConnectionError" in failed.json()["error"]
        bad = client.post("/work", json={"n": "x"})
        assert bad.status_code == 400

        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        for name in (
            "garrison_runtime_up",
            "garrison_circuitbreaker_state",
            "garrison_ratelimiter_admitted",
            "garrison_bulkhead_in_use",
            "garrison_retry_calls",
            "garrison_actor_restarts",
            "daemon_work_requests",
        ):
            assert name in families, sorted(families)
        assert families["garrison_runtime_up"].samples[0].value == 1
        served = {
            s.labels["outcome"]: s.value
            for s in families["daemon_work_requests"].samples
            if s.name == "daemon_work_requests_total"
        }
        assert served == {"ok": 1, "failed": 1, "bad_request": 1}
        breaker = {
            s.labels["state"]: s.value
            for s in families["garrison_circuitbreaker_state"].samples
            if s.labels["name"] == "downstream"
        }
        assert breaker["closed"] == 1

        status = client.get("/status")
        assert status.status_code == 200
        data = json.loads(status.text)  # strict JSON: no Infinity/NaN
        assert data["runtime"]["state"] == "running"
        assert data["draining"] is False
        assert data["tree"]["children"][0]["name"] == "pipeline:downstream"
        stages = data["pipelines"]["downstream"]
        assert {"retry", "circuit_breaker", "rate_limiter", "timeout", "bulkhead"} <= set(stages)
        assert stages["circuit_breaker"]["state"] == "closed"
        assert data["work"] == {"accepted": 2, "completed": 2, "abandoned": 0, "in_flight": 0}

    # garrison status against the live daemon (in-process; captured output is plain text)
    capsys.readouterr()
    assert main(["status", base]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "\x1b[" not in out
    assert "supervision tree:" in out
    assert "garrison-daemon: running, restarts 0" in out
    assert "pipeline:downstream (PipelineSupervisor): running, restarts 0" in out
    for stage in ("bulkhead", "timeout", "rate_limiter", "circuit_breaker", "retry"):
        assert f"── {stage} (" in out
    assert "downstream: breaker closed" in out
    assert "limiter admitted" in out
    assert "/16 in use" in out

    result = asyncio.run(_burst(base, daemon.process, accepted_before=2))

    # every request accepted before the signal was answered, and answered correctly
    for body, response in zip(result["bodies"], result["responses"], strict=True):
        assert response.status_code == 200, (body, response.status_code, response.text)
        assert response.json()["value"] == body["n"] * 2
    assert result["in_flight_at_signal"] > 0
    # after the daemon said it was draining, no work was accepted
    assert all(code in (503, "refused") for code in result["late"]), result["late"]

    code = daemon.process.wait(DRAIN_TIMEOUT + 5.0)
    took = time.monotonic() - result["signalled"]
    assert code == 0
    assert took < DRAIN_TIMEOUT + 5.0
    lines = daemon.stdout_lines()
    assert lines[-1] == "drained: 32/32 in-flight operations completed", lines
    # logs are JSON lines on stderr
    logged = [
        json.loads(line)
        for line in daemon.stderr.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    events = {entry["event"] for entry in logged}
    assert {"garrison.runtime.started", "daemon.draining", "garrison.runtime.stopped"} <= events


@pytest.mark.timeout(30)
def test_status_of_a_closed_port_exits_2(capsys):
    port = _closed_port()
    assert main(["status", f"http://127.0.0.1:{port}"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "garrison status: cannot reach" in err
    assert f"127.0.0.1:{port}/status" in err


def test_status_url_defaults_to_status_path():
    assert status_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/status"
    assert status_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/status"
    assert status_url("127.0.0.1:8080") == "http://127.0.0.1:8080/status"
    assert status_url("http://h:1/api/state") == "http://h:1/api/state"


def test_status_rendering_helpers():
    tree = {
        "name": "rt",
        "state": "running",
        "restarts": 0,
        "children": [
            {"name": "a", "state": "restarting", "restarts": 2, "actor_class": "A"},
            {
                "name": "sup",
                "state": "running",
                "restarts": 1,
                "give_ups": 1,
                "children": [{"name": "b", "state": "running", "restarts": 0}],
            },
        ],
    }
    assert status_tree_lines(tree) == [
        "rt: running, restarts 0",
        "├── a (A): restarting, restarts 2",
        "└── sup: running, restarts 1, gave up 1",
        "    └── b: running, restarts 0",
    ]
    line = pipeline_summary(
        {
            "circuit_breaker": {
                "state": "open",
                "consecutive_failures": 5,
                "failure_threshold": 5,
                "error_rate": 1.0,
                "retry_after": 2.5,
            },
            "rate_limiter": {"admitted": 10, "rejected": 3, "waiting": 1},
            "bulkhead": {"in_use": 2, "max_concurrent": 4, "queued": 0, "rejected": 1},
        }
    )
    assert line == (
        "breaker open (failures 5/5, error rate 100%, retry after 2.5s); "
        "limiter admitted 10 rejected 3 queued 1; bulkhead 2/4 in use, 0 queued, 1 rejected"
    )
    assert pipeline_summary({"error": "AskTimeout: no answer"}).startswith("status unavailable")


def test_status_renders_a_rich_tree_on_a_terminal(monkeypatch, capsys):
    import garrison.cli as cli  # noqa: PLC0415

    document = {
        "runtime": {"name": "svc", "state": "running"},
        "draining": True,
        "tree": {
            "name": "svc",
            "state": "running",
            "restarts": 0,
            "children": [{"name": "pipeline:api", "state": "running", "restarts": 3}],
        },
        "pipelines": {"api": {"bulkhead": {"in_use": 1, "max_concurrent": 2}}},
    }
    monkeypatch.setattr(cli, "use_rich", lambda stream=None: True)
    monkeypatch.setattr(cli, "_fetch_status", lambda url: (document, ""))
    assert main(["status", "http://127.0.0.1:9"]) == 0
    out = capsys.readouterr().out
    assert "runtime svc: running (draining)" in out
    assert "└── pipeline:api: running, restarts 3" in out
    assert "api: bulkhead 1/2 in use" in out
