"""The ``redis_server`` fixture: a fresh, empty redis-server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet.redis_server import RedisServer, find_redis_server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (bash .ci/setup installs it)")
    with RedisServer() as server:
        yield server
