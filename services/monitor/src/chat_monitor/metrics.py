"""Prometheus metrics of the monitor: the cluster's figures as the monitor computes them.

Per-process figures come from each service's own ``/metrics``; these are the cluster-wide ones
(queue depth read from the broker, live instances, open alerts) that no single process knows.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from chat_common.metrics import register_process_collectors
from chat_monitor.alerts import AlertManager


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        register_process_collectors(registry)
        self.heartbeats = Counter("chat_monitor_heartbeats", "Heartbeats received by role", ["role"], registry=registry)
        self.live = Gauge("chat_monitor_live_instances", "Instances heard from recently", ["role"], registry=registry)
        self.silent = Gauge("chat_monitor_silent_instances", "Instances gone silent, not replaced", registry=registry)
        self.connections = Gauge("chat_monitor_connections", "Connections over all gateways", registry=registry)
        self.users = Gauge(
            "chat_monitor_users",
            "Users connected: distinct across gateways with Redis, else summed over gateways",
            registry=registry,
        )
        self.capacity = Gauge("chat_monitor_capacity", "WS_MAX_CONNECTIONS summed over gateways", registry=registry)
        self.messages_per_minute = Gauge(
            "chat_monitor_messages_per_minute", "User messages per minute over the window", registry=registry
        )
        self.error_rate = Gauge(
            "chat_monitor_error_rate", "Failed requests / requests over the window", registry=registry
        )
        self.window_requests = Gauge(
            "chat_monitor_window_requests",
            "Requests over the window (error-rate rules need HEALTH_ERROR_RATE_MIN_REQUESTS of them)",
            registry=registry,
        )
        self.response = Gauge(
            "chat_monitor_response_seconds",
            "Answer time (request to response_end) percentiles over the window",
            ["quantile"],
            registry=registry,
        )
        self.queue_messages = Gauge(
            "chat_monitor_request_queue_messages", "Requests waiting in a request queue", ["queue"], registry=registry
        )
        self.queue_consumers = Gauge(
            "chat_monitor_request_queue_consumers", "Consumers of a request queue", ["queue"], registry=registry
        )
        self.memory = Gauge(
            "chat_monitor_cluster_memory_bytes", "Resident memory summed over instances", registry=registry
        )
        self.alerts = Gauge("chat_monitor_alerts_firing", "Open alerts by severity", ["severity"], registry=registry)
        self.status = Gauge(
            "chat_monitor_health_status", "Cluster status: 0 healthy, 1 warning, 2 critical", registry=registry
        )

    def update(self, document: dict[str, Any], alerts: AlertManager) -> None:
        cluster = document["cluster"]
        self.live.labels("gateway").set(len(document["gateways"]))
        self.live.labels("worker").set(len(document["workers"]))
        self.silent.set(len(document["silentInstances"]))
        self.connections.set(cluster["connections"])
        self.users.set(cluster["users"])
        self.capacity.set(cluster["capacity"])
        self.messages_per_minute.set(cluster["messagesPerMinute"])
        self.error_rate.set(cluster["errorRate"])
        self.window_requests.set(cluster["windowRequests"] or 0)
        for quantile in ("p50", "p95", "p99"):
            self.response.labels(quantile).set(cluster["responseTime"][quantile] / 1000)
        for queue in document["queues"]["requestQueues"]:
            self.queue_messages.labels(queue["name"]).set(queue["messages"])
            self.queue_consumers.labels(queue["name"]).set(queue["consumers"])
        self.memory.set(cluster["memoryBytes"])
        severities = {"warning": 0, "critical": 0}
        for alert in alerts.open.values():
            severities[alert.severity] = severities.get(alert.severity, 0) + 1
        for severity, count in severities.items():
            self.alerts.labels(severity).set(count)
        self.status.set({"healthy": 0, "warning": 1, "critical": 2}[document["health"]["status"]])
