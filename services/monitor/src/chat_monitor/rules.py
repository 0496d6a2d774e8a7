"""The cluster's health: SPEC §4's figures over the sliding window, and the rules that set its status.

On top of the rules shared with the gateway (``chat_common.health``: capacity, p95 answer time,
error rate), the monitor applies the ones only it can see:

- ``no_gateways`` / ``no_workers``: no live instance of the role → critical;
- ``instance_silent:<id>``: an instance stopped sending heartbeats (not replaced yet) → warning;
- ``queue_backlog.warning``: more than HEALTH_QUEUE_WARNING requests waiting → warning;
  ``queue_backlog.critical``: above that and larger than HEALTH_BACKLOG_GROWTH_WINDOW ago → critical;
- ``memory:<id>``: a process's resident memory above HEALTH_MEMORY_WARNING_MB → warning;
- ``broker``: the monitor cannot read the request queues → warning.
"""

from __future__ import annotations

import time

from chat_common.envelopes import Heartbeat
from chat_common.health import HealthReport, HealthThresholds
from chat_monitor.cluster import ClusterView
from chat_monitor.queues import QueueState


def cluster_health(
    cluster: ClusterView, queues: QueueState, thresholds: HealthThresholds, *, now: float | None = None
) -> HealthReport:
    now = time.monotonic() if now is None else now
    gateways, workers = cluster.live("gateway", now=now), cluster.live("worker", now=now)
    figures = cluster.role_figures("gateway", now=now)
    report = HealthReport(
        total_connections=sum(g.connections for g in gateways),
        total_users=total_users(gateways)[0],
        messages_per_minute=figures.per_minute(cluster.window_s),
        average_response_ms=figures.average_ms,
        error_rate=figures.error_rate,
        uptime_ms=int((time.time() - cluster.started) * 1000),
        p95_response_ms=figures.percentiles()["p95"],
        window_requests=figures.requests,
    ).check(capacity=sum(g.max_connections for g in gateways), thresholds=thresholds)
    if not gateways:
        report.flag("critical", "no live gateways", key="no_gateways")
    if not workers:
        report.flag("critical", "no live workers", key="no_workers")
    for gone in sorted(cluster.gone.values(), key=lambda g: g.instance_id):
        silent_s = now - gone.last_seen
        report.flag(
            "warning",
            f"{gone.role} {gone.instance_id} silent for {silent_s:.0f} s",
            key=f"instance_silent:{gone.instance_id}",
        )
    _check_queues(report, queues, thresholds, now=now)
    for beat in gateways + workers:
        if beat.rss_bytes > thresholds.memory_warning_bytes:
            report.flag(
                "warning",
                f"{beat.role} {beat.instance_id} uses {beat.rss_bytes / 2**20:.0f} MB of memory",
                key=f"memory:{beat.instance_id}",
            )
    return report


def total_users(gateways: list[Heartbeat]) -> tuple[int, bool]:
    """Users connected to the cluster, and whether the figure is exact.

    When every live gateway counts the cluster's distinct users in Redis (``REDIS_URL`` set and
    reachable), the figure is that count, taken from the most recent heartbeat: a user connected to
    two gateways counts once. Otherwise it is the sum of each gateway's users, which counts such a
    user once per gateway (an upper bound).
    """
    if gateways and all(g.cluster_users is not None for g in gateways):
        newest = max(gateways, key=lambda g: g.timestamp_ms)
        assert newest.cluster_users is not None
        return newest.cluster_users, True
    return sum(g.users for g in gateways), False


def _check_queues(report: HealthReport, queues: QueueState, thresholds: HealthThresholds, *, now: float) -> None:
    if not queues.known:
        report.flag("warning", "request queue depth unknown (broker not readable)", key="broker")
        return
    depth = queues.depth
    if depth <= thresholds.queue_warning:
        return
    before = queues.depth_ago(thresholds.backlog_growth_window_s, now=now)
    if before is not None and depth > before:
        report.flag(
            "critical",
            f"request backlog growing: {depth} waiting, {before} {thresholds.backlog_growth_window_s:.0f} s ago",
            key="queue_backlog.critical",
        )
    else:
        report.flag("warning", f"request backlog: {depth} waiting", key="queue_backlog.warning")
