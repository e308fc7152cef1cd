"""A throwaway redis-server on a free loopback port, with no persistence (tests, benchmarks)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_binary() -> str | None:
    """The redis-server executable, or None."""
    return shutil.which("redis-server")


def require_binary() -> str:
    """The redis-server binary; in a test, skip without it (locally) or fail (in CI)."""
    import pytest  # noqa: PLC0415 (the benchmarks use this module without pytest)

    binary = redis_binary()
    if binary is None:
        reason = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must install it", pytrace=False)
        pytest.skip(reason)
    return binary


class RedisServer:
    """``redis-server --port <port> --bind 127.0.0.1 --save '' --appendonly no``.

    With ``cluster`` (and a ``workdir`` for its nodes file) it is a one-node Redis Cluster
    serving every slot: scripts whose keys are not all on one slot fail with CROSSSLOT.
    """

    def __init__(
        self,
        binary: str,
        port: int | None = None,
        workdir: Path | None = None,
        *,
        cluster: bool = False,
    ) -> None:
        if cluster and workdir is None:
            raise ValueError("a cluster node needs a workdir for its nodes file")
        self.binary = binary
        self.port = port if port is not None else free_port()
        self.workdir = workdir
        self.cluster = cluster
        self.log: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        log: Any = subprocess.DEVNULL
        if self.workdir is not None:  # what it says goes to a file (a pipe could fill up)
            self.log = self.workdir / f"redis-{self.port}.log"
            log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *(["--dir", str(self.workdir)] if self.workdir is not None else []),
                *(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{self.port}.conf",
                        "--cluster-port",  # the bus: not port + 10000, which may not exist
                        str(free_port()),
                    ]
                    if self.cluster
                    else []
                ),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if log is not subprocess.DEVNULL:
            log.close()  # the server has its own copy
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                said = self.log.read_text()[-800:] if self.log is not None else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {said}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)
        if self.cluster:
            self.ask("CLUSTER ADDSLOTSRANGE 0 16383")
            while b"cluster_state:ok" not in self.ask("CLUSTER INFO"):
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError("the one-node cluster did not become ready")
                time.sleep(0.05)
        return self

    def ask(self, command: str) -> bytes:
        """Send one inline command; its raw reply (the first 64 KiB)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as conn:
            conn.sendall(command.encode() + b"\r\n")
            return conn.recv(65536)

    def ready(self) -> bool:
        """True when the server answers a PING."""
        try:
            return self.ask("PING").startswith(b"+PONG")
        except OSError:
            return False

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
