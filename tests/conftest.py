"""Session-wide real services (RabbitMQ vhost, PostgreSQL database) and process clusters."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

# every process the tests start (and this one) validates each server frame it encodes against its model
os.environ.setdefault("CHAT_CHECK_FRAMES", "1")

from tests.support.cluster import Cluster, isolated_cluster
from tests.support.processes import ServiceProcess
from tests.support.services import Services, session_services


@pytest.fixture(scope="session")
async def services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Services]:
    async with session_services() as found:
        yield found


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
async def stack(services: Services, log_dir: Path) -> AsyncIterator[Cluster]:
    """The shared cluster: fake OpenAI, one gateway, one worker (default settings)."""
    cluster = Cluster(services, log_dir)
    try:
        await cluster.fake_openai()
        await cluster.gateway()
        await cluster.worker()
        yield cluster
    finally:
        await cluster.stop_all()


@pytest.fixture(scope="session")
def gateway(stack: Cluster) -> ServiceProcess:
    return next(p for p in stack.processes if p.name == "gateway")


@pytest.fixture
async def cluster(services: Services, log_dir: Path) -> AsyncIterator[Cluster]:
    """A cluster of the test's own, in its own RabbitMQ vhost, stopped when the test ends."""
    async with isolated_cluster(services, log_dir) as own:
        yield own


@pytest.fixture
async def db(services: Services) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(services.database_url)
    try:
        yield connection
    finally:
        await connection.close()


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: a missing service must not pass silently."""
    if _skipped and os.environ.get("CI"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nCI: {len(_skipped)} test(s) skipped, which fails the run: {_skipped[:5]}")
