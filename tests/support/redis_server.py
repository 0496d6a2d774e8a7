"""A private Redis server for tests that stop and start it (never the shared one other tests use)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as redis
from redis.exceptions import RedisError

from tests.support.processes import free_port
from tests.support.wait import eventually


class PrivateRedis:
    """``redis-server`` on a free port, without persistence: a restart comes back empty, as a Redis
    that failed over or lost its memory does. ``stop`` kills it (SIGKILL), ``start`` starts it again
    on the same port."""

    def __init__(self, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: the Redis outage tests need their own instance")
        self.binary = binary
        self.port = free_port()
        self.log_path = log_dir / f"redis-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, *, timeout: float = 10) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        process = self._process

        async def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError("redis-server exited")
            return bool(await client.ping())

        try:
            await eventually(answers, timeout=timeout, interval=0.05, retry_on=(RedisError, OSError))
        except (AssertionError, RuntimeError) as exc:
            raise RuntimeError(f"redis-server did not start: {self.log_path.read_text(errors='replace')}") from exc
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)


@contextlib.asynccontextmanager
async def private_redis(log_dir: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(log_dir)
    await server.start()
    try:
        yield server
    finally:
        server.stop()
