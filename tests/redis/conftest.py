"""Fixtures of the Redis tests: one redis-server per session on a free loopback port.

Locally a missing redis-server skips these tests (with the reason); in CI (``CI=true``) it is
a failure: the Debian package ``redis-server`` must be installed there.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _server import RedisServer, redis_binary

pytest.importorskip("redis", reason="the Redis tests need the redis extra (redis-py)")


def require_binary() -> str:
    """The redis-server binary; skip (locally) or fail (CI) without it."""
    binary = redis_binary()
    if binary is None:
        reason = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must install it", pytrace=False)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for the whole session (no persistence)."""
    server = RedisServer(require_binary(), workdir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"
