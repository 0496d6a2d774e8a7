"""The monitor's ASGI application: heartbeat consumer, cluster health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pydantic
from aio_pika.abc import AbstractIncomingMessage
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from chat_common import topology
from chat_common.broker import connect
from chat_common.envelopes import Heartbeat
from chat_common.health import HealthThresholds
from chat_common.settings import Settings
from chat_monitor.cluster import ClusterView

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    cluster = ClusterView(silence_s=settings.instance_silence_timeout / 1000)
    thresholds = HealthThresholds()
    registry = CollectorRegistry()
    live = Gauge("chat_monitor_live_instances", "Instances heard from recently", ["role"], registry=registry)
    connections = Gauge("chat_monitor_connections", "Connections over all gateways", registry=registry)

    async def on_heartbeat(message: AbstractIncomingMessage) -> None:
        try:
            cluster.observe(Heartbeat.model_validate_json(message.body))
        except pydantic.ValidationError:
            logger.warning("malformed heartbeat dropped")

    async def forget_silent() -> None:
        while True:
            await asyncio.sleep(1)
            for instance_id in cluster.forget_silent():
                logger.warning("instance %s fell silent", instance_id)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connection = await connect(settings.amqp_url, name=f"monitor {settings.instance_id}")
        try:
            channel = await connection.channel()
            exchange = await topology.declare_telemetry(channel)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True, arguments={"x-message-ttl": 30_000})
            await queue.bind(exchange)
            await queue.consume(on_heartbeat, no_ack=True)
            sweeper = asyncio.create_task(forget_silent())
            logger.info("monitor %s ready", settings.instance_id)
            yield
            sweeper.cancel()
        finally:
            await connection.close()

    app = FastAPI(title="chat-monitor", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/api/websocket/health")
    async def health() -> JSONResponse:
        report = cluster.health(thresholds)
        return JSONResponse(report.to_json(), status_code=report.http_status)

    @app.get("/api/websocket/metrics")
    async def metrics() -> dict[str, Any]:
        report = cluster.health(thresholds)
        return {
            "health": report.to_json(),
            "gateways": [beat.model_dump() for beat in cluster.live("gateway")],
            "workers": [beat.model_dump() for beat in cluster.live("worker")],
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        for role in ("gateway", "worker"):
            live.labels(role).set(len(cluster.live(role)))
        connections.set(sum(g.connections for g in cluster.live("gateway")))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
