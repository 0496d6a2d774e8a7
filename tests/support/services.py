"""The real RabbitMQ, PostgreSQL and Redis the tests use, given by URL, isolated per test session.

URLs come from ``AMQP_URL``, ``DATABASE_URL`` and ``REDIS_URL`` (defaults: the local services).
Without ``DATABASE_URL`` the local PostgreSQL is tried as the ``chat`` role that scripts/services.sh
creates (password login over TCP, as on a stock Debian ``pg_hba.conf``), then as ``postgres`` (a
machine whose ``pg_hba.conf`` trusts local TCP logins); the first that logs in is used.
Where a service does not answer and a Docker engine does, testcontainers starts one; where neither
answers, the test run fails: a missing service is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from chat_common.store import ChatStore, create_pool


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def _container_url(kind: str) -> str:  # pragma: no cover - only where a Docker engine runs
    if kind == "amqp":
        from testcontainers.rabbitmq import RabbitMqContainer

        rabbit = RabbitMqContainer("rabbitmq:3.13").start()
        return f"amqp://guest:guest@{rabbit.get_container_host_ip()}:{rabbit.get_exposed_port(5672)}/"
    if kind == "postgres":
        from testcontainers.postgres import PostgresContainer

        pg = PostgresContainer("postgres:16", driver=None).start()
        return pg.get_connection_url()
    from testcontainers.redis import RedisContainer

    redis = RedisContainer("redis:7").start()
    return f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"


def service_url(kind: str, env: str, default: str, port: int) -> str:
    url = os.environ.get(env, default)
    if _reachable(url, port):
        return url
    if _docker_answers():
        return _container_url(kind)
    pytest.fail(f"{env}={url} does not answer and no Docker engine is available: start the service", pytrace=False)


# The role scripts/services.sh creates (with CREATEDB: each test session makes a database of its own),
# then the superuser where local TCP logins are trusted.
LOCAL_DATABASE_URLS = (
    "postgresql://chat:chat@localhost:5432/chat",
    "postgresql://postgres@localhost:5432/postgres",
)


async def _logs_in(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


async def database_base_url() -> str:
    """The PostgreSQL the tests make their databases in: ``DATABASE_URL``, else a local one that logs in."""
    if "DATABASE_URL" not in os.environ:
        for url in LOCAL_DATABASE_URLS:
            if await _logs_in(url):
                return url
    return service_url("postgres", "DATABASE_URL", LOCAL_DATABASE_URLS[0], 5432)


@dataclass
class Services:
    amqp_url: str
    database_url: str
    redis_url: str
    vhost: str | None
    database: str


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def make_vhost(base_url: str) -> tuple[str, str | None]:
    """A fresh vhost for this session when ``rabbitmqctl`` is at hand; else the URL's own vhost."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None or urlsplit(base_url).hostname not in ("localhost", "127.0.0.1"):
        return base_url, None
    vhost = f"test-{uuid.uuid4().hex[:8]}"
    user = urlsplit(base_url).username or "guest"
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    subprocess.run(
        [ctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return _with_path(base_url, "/" + vhost), vhost


def drop_vhost(vhost: str | None) -> None:
    ctl = shutil.which("rabbitmqctl")
    if vhost and ctl:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60, check=False)


async def close_broker_connections(vhost: str, reason: str) -> subprocess.CompletedProcess[str] | None:
    """RabbitMQ closes every client connection of ``vhost`` (``rabbitmqctl close_all_connections``,
    in a thread: it takes seconds); None where ``rabbitmqctl`` is not at hand."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        return None
    return await asyncio.to_thread(
        subprocess.run,
        [ctl, "close_all_connections", "-p", vhost, reason],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@asynccontextmanager
async def chat_store(database_url: str) -> AsyncIterator[ChatStore]:
    """A ``ChatStore`` on a pool of its own (2 connections) for a test that drives the store directly;
    the pool is closed on the way out."""
    pool = await create_pool(database_url, max_size=2)
    try:
        yield ChatStore(pool)
    finally:
        await pool.close()


async def make_database(base_url: str) -> tuple[str, str]:
    name = f"chat_test_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(base_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return _with_path(base_url, "/" + name), name


async def drop_database(base_url: str, name: str) -> None:
    connection = await asyncpg.connect(base_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@asynccontextmanager
async def session_services(*, redis: bool = True) -> AsyncIterator[Services]:
    """A vhost and a database of this run's own on the configured services, dropped on exit.

    ``redis=False`` leaves ``redis_url`` empty: the gateways then keep their limits per process.
    """
    amqp = service_url("amqp", "AMQP_URL", "amqp://guest:guest@localhost:5672/", 5672)
    database = await database_base_url()
    redis_url = service_url("redis", "REDIS_URL", "redis://localhost:6379/0", 6379) if redis else ""
    amqp_url, vhost = make_vhost(amqp)
    database_url, name = await make_database(database)
    try:
        yield Services(amqp_url=amqp_url, database_url=database_url, redis_url=redis_url, vhost=vhost, database=name)
    finally:
        await drop_database(database, name)
        drop_vhost(vhost)
