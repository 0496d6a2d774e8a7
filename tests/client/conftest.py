"""One cluster shared by the client tests that need settings of their own (a module-free session
fixture, so that its fake model and worker start once): development tokens on, 4 messages per
window, no JWT leeway, a quick stop."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess
from tests.support.services import Services, drop_vhost, make_vhost

GATEWAY_SETTINGS: dict[str, str | int] = {
    "DEV_TOKENS_ENABLED": "true",
    "WS_RATE_LIMIT_MAX_MESSAGES": 4,
    "JWT_LEEWAY": 0,
}
QUICK_STOP: dict[str, str | int] = {"SHUTDOWN_GRACE": 2000, "SHUTDOWN_SPREAD": 200}
"""the tests end no answer mid-way: stop in seconds rather than the production grace."""


@pytest.fixture(scope="session")
async def client_cluster(services: Services, log_dir: Path) -> AsyncIterator[Cluster]:
    amqp_url, vhost = await asyncio.to_thread(make_vhost, services.amqp_url)
    cluster = Cluster(dataclasses.replace(services, amqp_url=amqp_url, vhost=vhost), log_dir)
    try:
        await cluster.fake_openai()
        await asyncio.gather(
            cluster.worker(CHUNK_COALESCE_MS=20, **QUICK_STOP), cluster.gateway(**GATEWAY_SETTINGS, **QUICK_STOP)
        )
        yield cluster
    finally:
        await cluster.stop_all()
        await asyncio.to_thread(drop_vhost, vhost)


@pytest.fixture(scope="session")
def client_gateway(client_cluster: Cluster) -> ServiceProcess:
    return next(p for p in client_cluster.processes if p.name == "gateway")
