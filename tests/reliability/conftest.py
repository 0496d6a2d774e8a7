"""One RabbitMQ vhost and one fake OpenAI server for all reliability tests; each test starts its own
gateways and workers in it (``rel``) and they are stopped when the test ends.

Starting processes is what these tests spend their time on, so what can be shared is shared; tests
that need other queue arguments (a delivery limit, a queue bound) use the per-test ``cluster``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from chat_common.topology import DEAD_LETTER_QUEUE, DEAD_NOTICE_QUEUE, request_queue_name
from tests.support.cluster import Cluster, isolated_cluster
from tests.support.processes import ServiceProcess
from tests.support.services import Services


@pytest.fixture(scope="session")
async def rel_base(services: Services, log_dir: Path) -> AsyncIterator[Cluster]:
    async with isolated_cluster(services, log_dir) as base:
        await base.fake_openai()
        yield base


@pytest.fixture
async def rel(rel_base: Cluster) -> AsyncIterator[Cluster]:
    """This test's processes, in the shared vhost, using the shared fake OpenAI server."""
    scene = Cluster(rel_base.services, rel_base.log_dir)
    scene.openai_url = rel_base.openai_url
    scene.start_timeout = 60  # several processes start at once here
    await _purge(rel_base.services.amqp_url)
    try:
        yield scene
    finally:
        await scene.stop_all()
        await _purge(rel_base.services.amqp_url)


@pytest.fixture
def own_queues(cluster: Cluster, rel_base: Cluster) -> Cluster:
    """The per-test ``cluster`` (a vhost of its own, for other queue arguments) answering with the
    shared fake OpenAI server."""
    cluster.openai_url = rel_base.openai_url
    return cluster


@pytest.fixture
def fake(rel_base: Cluster) -> ServiceProcess:
    return next(p for p in rel_base.processes if p.name == "fake-openai")


async def _purge(amqp_url: str) -> None:
    """Leave no request of one test for the workers of the next."""
    connection = await aio_pika.connect(amqp_url)
    try:
        for name in (
            request_queue_name("messages"),
            request_queue_name("documents"),
            DEAD_LETTER_QUEUE,
            DEAD_NOTICE_QUEUE,
        ):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                queue = await channel.declare_queue(name, passive=True)
                await queue.purge()
    finally:
        await connection.close()
