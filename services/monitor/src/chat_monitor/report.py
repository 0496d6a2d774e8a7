"""The documents the monitor serves: the detailed metrics JSON and the time series of the dashboard."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from chat_common.envelopes import Heartbeat
from chat_common.health import HealthReport
from chat_monitor.alerts import AlertManager
from chat_monitor.cluster import ClusterView, InstanceView
from chat_monitor.queues import QueueState
from chat_monitor.rules import total_users
from chat_monitor.traces import TraceBook


@dataclass(slots=True)
class Timeline:
    """One point per evaluation (every second), the last ``size`` of them, for the dashboard's charts."""

    size: int = 900
    points: deque[dict[str, Any]] = field(default_factory=deque)

    def add(self, point: dict[str, Any]) -> None:
        self.points.append(point)
        while len(self.points) > self.size:
            self.points.popleft()

    def since(self, ms: int) -> list[dict[str, Any]]:
        return [point for point in self.points if point["t"] > ms]


def timeline_point(report: HealthReport, metrics: dict[str, Any]) -> dict[str, Any]:
    cluster = metrics["cluster"]
    latency = cluster["responseTime"]
    return {
        "t": int(time.time() * 1000),
        "connections": report.total_connections,
        "users": report.total_users,
        "messagesPerMinute": round(report.messages_per_minute, 2),
        "errorRate": round(report.error_rate, 4),
        "p50": latency["p50"],
        "p95": latency["p95"],
        "p99": latency["p99"],
        "average": round(report.average_response_ms, 1),
        "queueDepth": metrics["queues"]["depth"],
        "inFlight": cluster["inFlight"],
        "gateways": len(metrics["gateways"]),
        "workers": len(metrics["workers"]),
        "alerts": len(metrics["alerts"]["open"]),
        "memoryBytes": cluster["memoryBytes"],
    }


def _instance(cluster: ClusterView, view: InstanceView) -> dict[str, Any]:
    beat: Heartbeat = view.latest
    figures = cluster.figures(view)
    document: dict[str, Any] = {
        "instanceId": beat.instance_id,
        "role": beat.role,
        "lastHeartbeatAgoMs": int((time.monotonic() - view.received) * 1000),
        "uptime": max(0, beat.timestamp_ms - beat.started_ms),
        "inFlight": beat.in_flight,
        "requestsTotal": beat.requests_total,
        "errorsTotal": beat.errors_total,
        "errorsByCode": beat.errors_by_code,
        "messagesPerMinute": round(figures.per_minute(cluster.window_s), 2),
        "errorRate": round(figures.error_rate, 4),
        "averageResponseTime": round(figures.average_ms, 1),
        "responseTime": figures.percentiles(),
        "memoryBytes": beat.rss_bytes,
        "cpuSeconds": round(beat.cpu_seconds, 2),
        "brokerConnected": beat.broker_connected,
    }
    if beat.role == "gateway":
        document.update(
            connections=beat.connections,
            users=beat.users,
            clusterUsers=beat.cluster_users,
            maxConnections=beat.max_connections,
            firstChunkTime=figures.percentiles(first_chunk=True),
        )
    else:
        document.update(
            concurrency=beat.concurrency,
            utilisation=round(beat.in_flight / beat.concurrency, 3) if beat.concurrency else 0.0,
            firstTokenTime=figures.percentiles(first_chunk=True),
            tokensTotal=beat.tokens_total,
        )
    return document


def metrics_document(
    cluster: ClusterView, report: HealthReport, queues: QueueState, alerts: AlertManager, traces: TraceBook
) -> dict[str, Any]:
    gateways = sorted(cluster.live_views("gateway"), key=lambda v: v.latest.instance_id)
    workers = sorted(cluster.live_views("worker"), key=lambda v: v.latest.instance_id)
    gateway_figures = cluster.role_figures("gateway")
    worker_figures = cluster.role_figures("worker")
    return {
        "timestamp": report.to_json()["timestamp"],
        "windowMs": int(cluster.window_s * 1000),
        "health": report.to_json(),
        "cluster": {
            "connections": report.total_connections,
            "users": report.total_users,
            "usersCounted": "distinct" if total_users([v.latest for v in gateways])[1] else "per_gateway_sum",
            "capacity": sum(v.latest.max_connections for v in gateways),
            "messagesPerMinute": round(report.messages_per_minute, 2),
            "errorRate": round(report.error_rate, 4),
            "windowRequests": report.window_requests,
            "averageResponseTime": round(report.average_response_ms, 1),
            "responseTime": gateway_figures.percentiles(),
            "firstChunkTime": gateway_figures.percentiles(first_chunk=True),
            "workerAnswerTime": worker_figures.percentiles(),
            "firstTokenTime": worker_figures.percentiles(first_chunk=True),
            "inFlight": sum(v.latest.in_flight for v in gateways),
            "workerInFlight": sum(v.latest.in_flight for v in workers),
            "workerConcurrency": sum(v.latest.concurrency for v in workers),
            "memoryBytes": sum(v.latest.rss_bytes for v in gateways + workers),
        },
        "queues": {
            "known": queues.known,
            "depth": queues.depth,
            "consumers": queues.consumers,
            "requestQueues": [
                {"name": q.name, "messages": q.messages, "consumers": q.consumers} for q in queues.queues
            ],
        },
        "gateways": [_instance(cluster, view) for view in gateways],
        "workers": [_instance(cluster, view) for view in workers],
        "silentInstances": [
            {"instanceId": g.instance_id, "role": g.role, "lastHeartbeatAt": g.last_seen_ms}
            for g in cluster.gone.values()
        ],
        "alerts": {"open": alerts.open_alerts(), "recent": list(alerts.recent)[::-1]},
        "traces": {"slowest": traces.slowest(), "failed": traces.failed()},
    }
