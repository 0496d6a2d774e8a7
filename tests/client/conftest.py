"""One cluster shared by the client tests that need settings of their own (a module-free session
fixture, so that its fake model and worker start once): development tokens on, 4 messages per
window, no JWT leeway, a quick stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, isolated_cluster
from tests.support.processes import ServiceProcess
from tests.support.services import Services

GATEWAY_SETTINGS: dict[str, str | int] = {
    "DEV_TOKENS_ENABLED": "true",
    "WS_RATE_LIMIT_MAX_MESSAGES": 4,
    "JWT_LEEWAY": 0,
}
QUICK_STOP: dict[str, str | int] = {"SHUTDOWN_GRACE": 2000, "SHUTDOWN_SPREAD": 200}
"""the tests end no answer mid-way: stop in seconds rather than the production grace."""


@pytest.fixture(scope="session")
async def client_cluster(services: Services, log_dir: Path) -> AsyncIterator[Cluster]:
    async with isolated_cluster(services, log_dir) as cluster:
        await cluster.fake_openai()
        await asyncio.gather(
            cluster.worker(CHUNK_COALESCE_MS=20, **QUICK_STOP), cluster.gateway(**GATEWAY_SETTINGS, **QUICK_STOP)
        )
        yield cluster


@pytest.fixture(scope="session")
def client_gateway(client_cluster: Cluster) -> ServiceProcess:
    return next(p for p in client_cluster.processes if p.name == "gateway")
