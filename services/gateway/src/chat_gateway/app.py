"""The gateway's ASGI application: lifespan-owned clients, the WebSocket route and the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chat_common.broker import publish_farewell, publish_heartbeats
from chat_common.envelopes import Heartbeat
from chat_common.health import HealthReport, HealthThresholds
from chat_common.heartbeat import build_heartbeat
from chat_common.http_policy import RequestLimits, SecurityHeaders
from chat_common.samples import RequestSampler
from chat_common.settings import GatewaySettings
from chat_common.store import ChatStore, create_pool
from chat_gateway.admission import AdmissionStore, LocalAdmission
from chat_gateway.auth import TokenVerifier
from chat_gateway.broker import GatewayBroker
from chat_gateway.page import mount_chat_page
from chat_gateway.state import GatewayState, build
from chat_gateway.sweeper import sweep_forever

logger = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


async def make_admission(settings: GatewaySettings) -> AdmissionStore:
    if settings.redis_url:
        from chat_gateway.redis_admission import RedisAdmission

        return await RedisAdmission.connect(settings)
    return LocalAdmission()


def create_app(settings: GatewaySettings, *, sampler: RequestSampler | None = None) -> FastAPI:
    """The gateway app; ``sampler`` is the span processor that collects slow and failed requests
    for the heartbeat (installed with the tracer provider by ``__main__``)."""
    verifier = TokenVerifier(settings)  # fails fast on a missing key
    app = FastAPI(
        title="chat-gateway",
        lifespan=_lifespan(settings, verifier, sampler or RequestSampler()),
        docs_url=None,
        redoc_url=None,
        # FastAPI's own telemetry would hold a span (and its operation spans) open for the whole life
        # of every WebSocket connection: memory per connection and a trace that lasts for hours.
        # Messages are traced one by one (chat_gateway.tracing); HTTP requests keep their spans, except
        # health and metrics, polled every few seconds.
        telemetry={"exclude": _untraced},
    )
    _routes(app)
    mount_chat_page(app, settings)
    app.add_middleware(SecurityHeaders, websocket=True)
    app.add_middleware(RequestLimits)
    return app


def _lifespan(settings: GatewaySettings, verifier: TokenVerifier, samples: RequestSampler) -> Lifespan:
    """Open the clients, wire the components, run the sweep and the heartbeats; on the way out, the
    farewell heartbeat, then the clients closed in the reverse order."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(str(settings.database_url), max_size=settings.database_pool_size)
        broker = GatewayBroker(settings)
        admission = await make_admission(settings)
        state = build(settings, verifier, ChatStore(pool), broker, admission)
        try:
            await broker.start(state.router.on_reply)
            app.state.gateway = state
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(state.questions.run()),
                    tasks.create_task(sweep_forever(state)),
                    tasks.create_task(
                        publish_heartbeats(
                            _telemetry(broker),
                            lambda: heartbeat(state, samples),
                            interval_s=settings.heartbeat_interval_s,
                        )
                    ),
                ]
                logger.info("gateway %s ready", settings.instance_id)
                try:
                    yield
                finally:
                    for task in background:
                        task.cancel()
                    await publish_farewell(broker.telemetry, heartbeat(state, samples))
            await state.inflight.close()
        finally:
            await broker.close()
            await admission.close()
            await pool.close()

    return lifespan


def _routes(app: FastAPI) -> None:
    @app.websocket("/ws/chat")
    async def chat_socket(websocket: WebSocket) -> None:
        await websocket.app.state.gateway.sessions.serve(websocket)

    @app.get("/api/websocket/health")
    async def health() -> JSONResponse:
        report = health_report(app.state.gateway)
        return JSONResponse(report.to_json(), status_code=report.http_status)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 when this process can take connections now; what the balancer and probes ask."""
        reasons = not_ready(app.state.gateway)
        return JSONResponse(
            {"status": "not_ready" if reasons else "ready", "role": "gateway", "reasons": reasons},
            status_code=503 if reasons else 200,
        )

    @app.get("/livez")
    async def livez() -> JSONResponse:
        """200 whenever the event loop answers: a restart would not help with anything else."""
        return JSONResponse({"status": "alive", "role": "gateway"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(app.state.gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)


_POLLED_PATHS = frozenset({"/api/websocket/health", "/metrics", "/readyz", "/livez"})


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return bool(scope.get("type") == "websocket" or scope.get("path") in _POLLED_PATHS)


def _telemetry(broker: GatewayBroker):  # type: ignore[no-untyped-def]
    assert broker.telemetry is not None
    return broker.telemetry


def not_ready(state: GatewayState) -> list[str]:
    """Why this process cannot take new connections now (empty: ready).

    Only what this process can fix by itself counts: the broker connection, a drain, a full process.
    The model's failures do not (every gateway would leave the balancer at once for a provider
    outage), nor the cluster's health: those are in ``/api/websocket/health`` for humans and alerts.
    """
    reasons = []
    if not state.broker.connected:
        reasons.append("not connected to RabbitMQ")
    if not state.door.accepting:
        reasons.append("shutting down")
    if len(state.registry) >= state.settings.ws_max_connections:
        reasons.append("at capacity")
    return reasons


def health_report(state: GatewayState) -> HealthReport:
    figures = state.metrics.window.figures()
    thresholds = HealthThresholds.from_settings(state.settings)
    report = HealthReport(
        total_connections=len(state.registry),
        total_users=state.registry.users,
        messages_per_minute=figures.per_minute,
        average_response_ms=figures.average_response_ms,
        error_rate=figures.error_rate,
        uptime_ms=int((time.time() - state.started) * 1000),
        p95_response_ms=figures.p95_response_ms,
        window_requests=figures.requests,
    ).check(capacity=state.settings.ws_max_connections, thresholds=thresholds)
    if not state.broker.connected:
        report.flag("critical", "not connected to RabbitMQ", key="broker")
    if getattr(state.admission, "degraded", False):
        report.flag("warning", "Redis unreachable: connection and rate limits hold per gateway only", key="redis")
    return report


def heartbeat(state: GatewayState, sampler: RequestSampler) -> Heartbeat:
    return build_heartbeat(
        "gateway",
        instance_id=state.settings.instance_id,
        started=state.started,
        figures=state.metrics,
        sampler=sampler,
        broker_connected=state.broker.connected,
        connections=len(state.registry),
        users=state.registry.users,
        cluster_users=getattr(state.admission, "cluster_users", None),
        max_connections=state.settings.ws_max_connections,
        in_flight=int(state.metrics.in_flight._value.get()),
    )
