"""The monitor's window arithmetic, health rules and alert lifecycle, on heartbeats built in the test."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider

from chat_common.envelopes import Heartbeat, RequestSample
from chat_common.health import HealthThresholds, Issue, percentile
from chat_common.samples import RequestSampler
from chat_monitor.alerts import AlertManager
from chat_monitor.cluster import ClusterView
from chat_monitor.queues import QueueDepth, QueueState
from chat_monitor.rules import cluster_health
from chat_monitor.traces import TraceBook

NOW_MS = int(time.time() * 1000)


def beat(instance: str, role: str = "gateway", **figures: Any) -> Heartbeat:
    figures.setdefault("started_ms", NOW_MS - 3_600_000)
    if role == "gateway":
        figures.setdefault("max_connections", 100)
    return Heartbeat(instance_id=instance, role=role, timestamp_ms=NOW_MS, **figures)  # type: ignore[arg-type]


def known_queues(depth: int = 0, *, history: list[tuple[float, int]] = ()) -> QueueState:  # type: ignore[assignment]
    state = QueueState(queues=[QueueDepth("chat.requests.messages", depth, 1)], known=True)
    state.history.extend(history)
    return state


def test_window_counts_the_difference_of_cumulative_counters() -> None:
    cluster = ClusterView(silence_s=15, window_s=60)
    cluster.observe(
        beat("gw", requests_total=100, errors_total=4, response_time_sum_ms=1000, response_time_count=10), now=0
    )
    cluster.observe(beat("gw", requests_total=130, errors_total=10), now=30)
    cluster.observe(
        beat(
            "gw",
            requests_total=160,
            errors_total=10,
            response_time_sum_ms=61_000,
            response_time_count=40,
            recent_response_ms=[1000.0, 3000.0],
        ),
        now=61,
    )
    figures = cluster.figures(cluster.instances["gw"], now=61)
    # the baseline is the last heartbeat at or before the window's start (t=1): the one at t=0
    assert figures.requests == 60
    assert figures.errors == 6
    assert figures.average_ms == 2000.0
    assert figures.response_ms == (1000.0, 3000.0)
    assert figures.per_minute(60) == 60.0
    assert figures.error_rate == 0.1
    # a process that started inside the window counts from zero
    young = ClusterView(silence_s=15, window_s=60)
    young.observe(beat("gw2", started_ms=int(time.time() * 1000) - 5_000, requests_total=7), now=0)
    assert young.figures(young.instances["gw2"], now=0).requests == 7


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.95) == 0.0


def test_silent_instance_is_gone_until_it_returns_or_is_replaced() -> None:
    cluster = ClusterView(silence_s=3, window_s=60)
    cluster.observe(beat("wk-1", "worker"), now=0)
    cluster.observe(beat("wk-2", "worker"), now=0)
    cluster.observe(beat("wk-2", "worker"), now=3)
    gone = cluster.sweep(now=3.5)
    assert [g.instance_id for g in gone] == ["wk-1"]
    assert gone[0].live_before == 2
    assert cluster.sweep(now=3.6) == []  # reported once
    cluster.observe(beat("wk-3", "worker"), now=4)  # a replacement: two workers live again
    assert cluster.gone == {}
    cluster.observe(beat("wk-3", "worker"), now=6)
    cluster.sweep(now=6.5)  # wk-2 falls silent
    assert set(cluster.gone) == {"wk-2"}
    cluster.observe(beat("wk-2", "worker"), now=7)  # and comes back
    assert cluster.gone == {}
    cluster.observe(beat("wk-3", "worker", stopping=True), now=8)  # stops in order: forgotten, not gone
    assert "wk-3" not in cluster.instances
    assert cluster.gone == {}


def test_monitor_rules_set_the_status() -> None:
    thresholds = HealthThresholds(queue_warning=10, backlog_growth_window_s=30, memory_warning_bytes=500 * 2**20)
    cluster = ClusterView(silence_s=3, window_s=60)
    now = time.monotonic()
    report = cluster_health(cluster, known_queues(), thresholds, now=now)
    assert report.status == "critical"
    assert report.issues == ["no live gateways", "no live workers"]

    cluster.observe(beat("gw", connections=10, users=7), now=now)
    cluster.observe(beat("wk", "worker", rss_bytes=600 * 2**20), now=now)
    report = cluster_health(cluster, known_queues(), thresholds, now=now)
    assert report.status == "warning"
    assert [i.key for i in report.found] == ["memory:wk"]
    assert report.total_connections == 10
    assert report.total_users == 7

    # a backlog above the threshold is a warning; growing over the growth window, critical
    report = cluster_health(cluster, known_queues(50, history=[(now - 40, 60)]), thresholds, now=now)
    assert "queue_backlog.warning" in [i.key for i in report.found]
    assert report.status == "warning"
    report = cluster_health(cluster, known_queues(50, history=[(now - 40, 20)]), thresholds, now=now)
    assert "queue_backlog.critical" in [i.key for i in report.found]
    assert report.status == "critical"
    assert report.http_status == 503

    unknown = QueueState()
    assert "broker" in [i.key for i in cluster_health(cluster, unknown, thresholds, now=now).found]


def test_error_rate_rule_ignores_a_window_with_fewer_than_the_minimum_requests() -> None:
    thresholds = HealthThresholds(error_rate_min_requests=5)
    cluster = ClusterView(silence_s=15, window_s=60)
    now = time.monotonic()
    cluster.observe(beat("wk", "worker"), now=now)
    # one request, one failure: 100 % of a window that says nothing yet
    young = int(time.time() * 1000) - 5_000  # started inside the window: its counters count from zero
    cluster.observe(beat("gw", started_ms=young, requests_total=1, errors_total=1), now=now)
    report = cluster_health(cluster, known_queues(), thresholds, now=now)
    assert report.error_rate == 1.0
    assert not [i.key for i in report.found if i.key.startswith("error_rate")]
    assert report.status == "healthy"
    # at the minimum the rule applies
    cluster.observe(beat("gw", started_ms=young, requests_total=5, errors_total=2), now=now + 1)
    report = cluster_health(cluster, known_queues(), thresholds, now=now + 1)
    assert [i.key for i in report.found] == ["error_rate.critical"]


def test_alert_fires_once_and_resolves_once_after_the_clear_delay() -> None:
    sent: list[dict[str, Any]] = []
    alerts = AlertManager(clear_delay_s=5, notify=sent.append)
    issue = Issue("no_workers", "critical", "no live workers")
    assert [e["state"] for e in alerts.evaluate([issue], now=0)] == ["firing"]
    assert alerts.evaluate([issue], now=1) == []
    assert alerts.evaluate([], now=2) == []  # clear, but not for long enough
    assert alerts.evaluate([issue], now=3) == []  # back before the delay: still the same alert
    assert alerts.evaluate([], now=7) == []
    resolved = alerts.evaluate([], now=8.1)
    assert [(e["alert"], e["state"]) for e in resolved] == [("no_workers", "resolved")]
    assert alerts.evaluate([], now=20) == []
    assert [(e["alert"], e["state"]) for e in sent] == [("no_workers", "firing"), ("no_workers", "resolved")]
    assert alerts.open_alerts() == []


def test_trace_book_merges_both_sides_of_a_request() -> None:
    book = TraceBook(jaeger_ui_url="http://jaeger:16686/")
    trace_id = "ab" * 16
    book.add(
        "worker",
        "wk",
        RequestSample(trace_id=trace_id, request_id="r1", started_ms=1, total_ms=900, stages={"llm": 800.0}),
    )
    book.add(
        "gateway",
        "gw",
        RequestSample(trace_id=trace_id, request_id="r1", started_ms=0, total_ms=1000, stages={"publish": 3.0}),
    )
    book.add(
        "gateway",
        "gw",
        RequestSample(trace_id="cd" * 16, request_id="r2", started_ms=0, total_ms=50, error_code="TIMEOUT"),
    )
    [slow] = book.slowest()
    assert slow["totalMs"] == 1000
    assert list(slow["stages"]) == ["gateway.publish", "worker.llm", "worker.total", "gateway.total"]
    assert slow["jaegerUrl"] == f"http://jaeger:16686/trace/{trace_id}"
    assert [f["errorCode"] for f in book.failed()] == ["TIMEOUT"]


def test_sampler_keeps_the_slowest_and_the_failed_from_spans() -> None:

    sampler = RequestSampler(keep=2)
    provider = TracerProvider()
    provider.add_span_processor(sampler)
    tracer = provider.get_tracer("test")
    for n, (duration_ns, error) in enumerate([(5, None), (30, None), (20, None), (10, "UPSTREAM_ERROR")]):
        root = tracer.start_span(
            "root", context=Context(), start_time=1_000, attributes={"chat.sample": True, "chat.request_id": f"r{n}"}
        )
        child = tracer.start_span(
            "child",
            context=trace.set_span_in_context(root),
            start_time=1_000,
            attributes={"chat.stage": "db"},
        )
        child.end(end_time=1_000 + duration_ns * 1_000_000 // 2)
        if error:
            root.set_attribute("chat.error_code", error)
        root.end(end_time=1_000 + duration_ns * 1_000_000)
    slowest, failed = sampler.take()
    assert [s.request_id for s in slowest] == ["r1", "r2"]
    assert slowest[0].total_ms == 30
    assert slowest[0].stages == {"db": 15.0}
    assert [(f.request_id, f.error_code) for f in failed] == [("r3", "UPSTREAM_ERROR")]
    assert sampler.take() == ([], [])
