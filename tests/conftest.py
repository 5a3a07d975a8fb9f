"""Shared fixtures: real Redis, real Orthanc (Python plugin), small synthetic data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import services
from tests.services import HERE, OrthancServer, RedisServer


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Let :func:`tests.services.require_binary` see the running test's markers."""
    services.CURRENT_TEST = item


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    services.CURRENT_TEST = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One fresh ``redis-server`` for the session (no persistence)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session's Redis, flushed before each test that uses it."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., OrthancServer]]:
    """Start Orthanc servers with a chosen plugin script and extra configuration."""
    started: list[OrthancServer] = []

    def make(script: Path | None = None, extra: dict | None = None,
             name: str = "orthanc", start: bool = True) -> OrthancServer:
        server = OrthancServer(tmp_path / name, script or HERE / "orthanc_probe.py",
                               extra or {})
        started.append(server)
        return server.start() if start else server

    yield make
    for server in started:
        server.discard()


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    """A plain Orthanc with the probe plugin loaded."""
    return orthanc_factory()
