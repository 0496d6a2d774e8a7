"""The monitor's ASGI application: heartbeat consumer, evaluation loop, health, metrics, alerts, dashboard.

The lifespan owns the AMQP connection, the evaluation loop (every second: forget silent instances,
read the request queues, apply the health rules, fire and resolve alerts, add a point to the
timeline) and the webhook sender. HTTP handlers only read what the loop keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pydantic
from aio_pika.abc import AbstractIncomingMessage
from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chat_common import topology
from chat_common.broker import connect
from chat_common.envelopes import Heartbeat
from chat_common.health import HealthReport, HealthThresholds
from chat_common.http_policy import RequestLimits, SecurityHeaders
from chat_common.settings import MonitorSettings
from chat_monitor.alerts import AlertManager, WebhookNotifier
from chat_monitor.cluster import ClusterView
from chat_monitor.metrics import MonitorMetrics
from chat_monitor.queues import QueueProbe, QueueState
from chat_monitor.report import Timeline, metrics_document, timeline_point
from chat_monitor.rules import cluster_health
from chat_monitor.traces import TraceBook

logger = logging.getLogger(__name__)

EVALUATION_INTERVAL_S = 1.0


@dataclass(slots=True)
class MonitorState:
    settings: MonitorSettings
    cluster: ClusterView
    thresholds: HealthThresholds
    alerts: AlertManager
    traces: TraceBook
    metrics: MonitorMetrics = field(default_factory=MonitorMetrics)
    timeline: Timeline = field(default_factory=Timeline)
    queues: QueueState = field(default_factory=QueueState)
    connected: bool = False

    def health(self) -> HealthReport:
        report = cluster_health(self.cluster, self.queues, self.thresholds)
        if not self.connected:
            report.flag("critical", "monitor not connected to RabbitMQ", key="monitor_broker")
        return report

    def observe(self, beat: Heartbeat) -> None:
        self.metrics.heartbeats.labels(beat.role).inc()
        self.cluster.observe(beat)
        for sample in beat.slow_requests + beat.failed_requests:
            self.traces.add(beat.role, beat.instance_id, sample)

    def document(self, report: HealthReport | None = None) -> dict[str, Any]:
        return metrics_document(self.cluster, report or self.health(), self.queues, self.alerts, self.traces)

    async def on_heartbeat(self, message: AbstractIncomingMessage) -> None:
        try:
            beat = Heartbeat.model_validate_json(message.body)
        except pydantic.ValidationError:
            logger.warning("malformed heartbeat dropped")
            return
        self.observe(beat)

    def evaluate(self) -> None:
        """One round of the loop, after the queues were read.

        Alerts wait one silence timeout after start-up: until then an instance that is alive may
        simply not have sent its first heartbeat to this monitor yet.
        """
        self.cluster.sweep()
        report = self.health()
        if time.time() - self.cluster.started >= self.cluster.silence_s:
            self.alerts.evaluate(report.found)
        document = self.document(report)
        self.timeline.add(timeline_point(report, document))
        self.metrics.update(document, self.alerts)


def make_state(settings: MonitorSettings) -> tuple[MonitorState, WebhookNotifier | None]:
    webhook = (
        WebhookNotifier(
            settings.alert_webhook_url,
            retries=settings.alert_webhook_retries,
            timeout_s=settings.alert_webhook_timeout_s,
        )
        if settings.alert_webhook_url
        else None
    )
    state = MonitorState(
        settings=settings,
        cluster=ClusterView(silence_s=settings.instance_silence_timeout_s, window_s=settings.health_window_s),
        thresholds=HealthThresholds.from_settings(settings),
        alerts=AlertManager(clear_delay_s=settings.alert_clear_delay_s, notify=webhook),
        traces=TraceBook(jaeger_ui_url=settings.jaeger_ui_url),
    )
    return state, webhook


async def evaluate_forever(state: MonitorState, probe: QueueProbe) -> None:
    while True:
        started = time.monotonic()
        try:
            state.queues = await asyncio.wait_for(probe.read(), timeout=EVALUATION_INTERVAL_S * 3)
        except TimeoutError:
            state.queues.known = False
        try:
            state.evaluate()
        except Exception:
            logger.exception("evaluation failed")
        await asyncio.sleep(max(0.05, EVALUATION_INTERVAL_S - (time.monotonic() - started)))


@contextlib.asynccontextmanager
async def running(state: MonitorState, webhook: WebhookNotifier | None) -> AsyncIterator[None]:
    """The monitor's life: the heartbeat consumer, the evaluation loop and the webhook sender."""
    settings = state.settings
    connection = await connect(str(settings.amqp_url), name=f"monitor {settings.instance_id}")
    probe = QueueProbe(connection)
    try:
        channel = await connection.channel()
        exchange = await topology.declare_telemetry(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True, arguments={"x-message-ttl": 30_000})
        await queue.bind(exchange)
        await queue.consume(state.on_heartbeat, no_ack=True)
        state.connected = True
        connection.close_callbacks.add(lambda *_: setattr(state, "connected", False))
        connection.reconnect_callbacks.add(lambda *_: setattr(state, "connected", True))
        async with asyncio.TaskGroup() as tasks:
            background = [tasks.create_task(evaluate_forever(state, probe))]
            if webhook is not None:
                background.append(tasks.create_task(webhook.run()))
            logger.info("monitor %s ready", settings.instance_id)
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
    finally:
        await probe.close()
        await connection.close()


def routes(state: MonitorState) -> APIRouter:
    """The monitor's HTTP API (SPEC §5): handlers only read what the evaluation loop keeps."""
    router = APIRouter()
    static = resources.files("chat_monitor") / "static"

    @router.get("/api/websocket/health")
    async def health() -> JSONResponse:
        report = state.health()
        return JSONResponse(report.to_json(), status_code=report.http_status)

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """200 when the monitor hears the cluster (connected to RabbitMQ); the cluster's own health
        is ``/api/websocket/health``."""
        if state.connected:
            return JSONResponse({"status": "ready", "role": "monitor", "reasons": []})
        return JSONResponse(
            {"status": "not_ready", "role": "monitor", "reasons": ["not connected to RabbitMQ"]}, status_code=503
        )

    @router.get("/livez")
    async def livez() -> JSONResponse:
        return JSONResponse({"status": "alive", "role": "monitor"})

    @router.get("/api/websocket/metrics")
    async def metrics() -> dict[str, Any]:
        return state.document()

    @router.get("/api/websocket/metrics/timeline")
    async def timeline(since: int = 0) -> dict[str, Any]:
        """Points of the dashboard's charts newer than ``since`` (epoch ms), one per second, 15 minutes at most."""
        return {"points": state.timeline.since(since)}

    @router.get("/api/websocket/alerts")
    async def alerts() -> dict[str, Any]:
        return {"open": state.alerts.open_alerts(), "recent": list(state.alerts.recent)[::-1]}

    @router.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/dashboard", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse((static / "dashboard.html").read_text(encoding="utf-8"))

    @router.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    return router


def create_app(settings: MonitorSettings) -> FastAPI:
    state, webhook = make_state(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(state, webhook):
            yield

    # no request spans: the monitor's HTTP traffic is dashboards and probes polling, not user messages
    app = FastAPI(title="chat-monitor", lifespan=lifespan, docs_url=None, redoc_url=None, telemetry={"tracing": False})
    app.state.monitor = state
    static = resources.files("chat_monitor") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.include_router(routes(state))
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestLimits)
    return app
