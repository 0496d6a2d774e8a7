"""Start gateways, workers, monitors and the fake OpenAI server as real processes for a test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.support.client import TEST_SECRET
from tests.support.processes import ServiceProcess, command, free_port, service_env
from tests.support.services import Services, drop_vhost, make_vhost

# Fast heartbeats and a short silence: the monitor's view of a test's processes settles in seconds.
TEST_SETTINGS: dict[str, object] = {
    "heartbeat_interval": 500,
    "instance_silence_timeout": 3000,
    "log_level": "INFO",
    "database_pool_size": 5,
}


class Cluster:
    """Owns every process it starts; ``stop_all`` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self, services: Services, log_dir: Path) -> None:
        self.services = services
        self.log_dir = log_dir
        self.processes: list[ServiceProcess] = []
        self.openai_url: str | None = None
        self.start_timeout = 60.0
        """seconds a process has to answer its health check after it was started."""

    def base_env(self, **overrides: str | int) -> dict[str, str]:
        services = self.services
        env = service_env(
            amqp_url=services.amqp_url, database_url=services.database_url, jwt_secret=TEST_SECRET, **TEST_SETTINGS
        )
        if self.openai_url is not None:
            env.update(
                LLM_PROVIDER="openai",
                OPENAI_API_KEY="test-key",
                OPENAI_BASE_URL=self.openai_url,
                OPENAI_MODEL="fake-model",
                OPENAI_MAX_RETRIES="1",
                OPENAI_TIMEOUT="10",
            )
        env.update({key.upper(): str(value) for key, value in overrides.items()})
        return env

    def _process(self, name: str, argv: list[str], env: dict[str, str], ready_url: str | None) -> ServiceProcess:
        process = ServiceProcess(name, argv, env, ready_url, self.log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log")
        self.processes.append(process)
        return process

    async def fake_openai(self, **env: str | int) -> ServiceProcess:
        port = free_port()
        process_env = dict(os.environ)
        process_env.update({key.upper(): str(value) for key, value in env.items()})
        process = self._process(
            "fake-openai",
            [sys.executable, "-m", "tests.support.fake_openai", "--port", str(port)],
            process_env,
            f"http://127.0.0.1:{port}/_requests",
        )
        await process.start()
        process.extra["url"] = f"http://127.0.0.1:{port}/v1"
        self.openai_url = process.extra["url"]
        return process

    async def gateway(self, **env: str | int) -> ServiceProcess:
        port = int(env.pop("gateway_port", free_port()))
        instance = str(env.pop("instance_id", f"gw-{uuid.uuid4().hex[:8]}"))
        host = str(env.get("host", "127.0.0.1"))  # HOST: another loopback address, as a container's own IP
        process = self._process(
            "gateway",
            command("chat-gateway"),
            self.base_env(gateway_port=port, instance_id=instance, **env),
            f"http://{host}:{port}/api/websocket/health",
        )
        process.extra.update(
            port=str(port),
            ws_url=f"ws://{host}:{port}/ws/chat",
            http_url=f"http://{host}:{port}",
            instance_id=instance,
        )
        return await process.start(timeout=self.start_timeout)

    async def worker(self, **env: str | int) -> ServiceProcess:
        port = int(env.pop("worker_metrics_port", free_port()))
        instance = str(env.pop("instance_id", f"wk-{uuid.uuid4().hex[:8]}"))
        process = self._process(
            "worker",
            command("llm-worker"),
            self.base_env(worker_metrics_port=port, instance_id=instance, **env),
            f"http://127.0.0.1:{port}/health",
        )
        process.extra.update(port=str(port), instance_id=instance)
        return await process.start(timeout=self.start_timeout)

    async def monitor(self, **env: str | int) -> ServiceProcess:
        port = int(env.pop("monitor_port", free_port()))
        process = self._process(
            "monitor",
            command("chat-monitor"),
            self.base_env(monitor_port=port, **env),
            f"http://127.0.0.1:{port}/api/websocket/health",
        )
        process.extra.update(port=str(port), http_url=f"http://127.0.0.1:{port}")
        return await process.start()

    async def openai_requests(self) -> list[dict[str, object]]:
        assert self.openai_url is not None
        async with httpx.AsyncClient() as client:
            response = await client.get(self.openai_url.removesuffix("/v1") + "/_requests")
            return list(response.json())

    async def stop_all(self) -> None:
        for process in reversed(self.processes):
            await process.stop(timeout=10)
        self.processes.clear()


@contextlib.asynccontextmanager
async def isolated_cluster(services: Services, log_dir: Path) -> AsyncIterator[Cluster]:
    """A cluster in a RabbitMQ vhost of its own: on exit its processes are stopped and the vhost dropped."""
    amqp_url, vhost = await asyncio.to_thread(make_vhost, services.amqp_url)
    cluster = Cluster(dataclasses.replace(services, amqp_url=amqp_url, vhost=vhost), log_dir)
    try:
        yield cluster
    finally:
        await cluster.stop_all()
        await asyncio.to_thread(drop_vhost, vhost)
