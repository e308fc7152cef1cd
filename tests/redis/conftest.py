"""Fixtures of the Redis tests: one redis-server per session on a free loopback port.

Locally a missing redis-server skips these tests (with the reason); in CI (``CI=true``) it is
a failure: the Debian package ``redis-server`` must be installed there.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _server import RedisServer, require_binary

pytest.importorskip("redis", reason="the Redis tests need the redis extra (redis-py)")


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
