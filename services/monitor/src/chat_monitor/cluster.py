"""The monitor's view of the cluster: the latest heartbeat of each live instance."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from chat_common.envelopes import Heartbeat
from chat_common.health import HealthReport, HealthThresholds


@dataclass(slots=True)
class InstanceView:
    latest: Heartbeat
    received: float
    history: deque[Heartbeat] = field(default_factory=lambda: deque(maxlen=120))


class ClusterView:
    def __init__(self, *, silence_s: float, window_s: int = 60) -> None:
        self.silence_s = silence_s
        self.window_s = window_s
        self.instances: dict[str, InstanceView] = {}
        self.started = time.time()

    def observe(self, beat: Heartbeat) -> None:
        view = self.instances.get(beat.instance_id)
        if view is None:
            view = self.instances[beat.instance_id] = InstanceView(beat, time.monotonic())
        view.latest, view.received = beat, time.monotonic()
        view.history.append(beat)

    def live(self, role: str | None = None) -> list[Heartbeat]:
        cutoff = time.monotonic() - self.silence_s
        return [
            v.latest
            for v in self.instances.values()
            if v.received >= cutoff and (role is None or v.latest.role == role)
        ]

    def forget_silent(self) -> list[str]:
        """Drop instances silent for longer than the silence timeout; return their ids."""
        cutoff = time.monotonic() - self.silence_s
        gone = [iid for iid, v in self.instances.items() if v.received < cutoff]
        for iid in gone:
            del self.instances[iid]
        return gone

    def _window_delta(self, view: InstanceView) -> tuple[int, int, float, int]:
        """requests, errors, response-ms sum and count over the window, from cumulative counters."""
        cutoff_ms = view.latest.timestamp_ms - self.window_s * 1000
        oldest = next((b for b in view.history if b.timestamp_ms >= cutoff_ms), view.history[0])
        if oldest is view.latest:
            return 0, 0, 0.0, 0
        latest = view.latest
        return (
            max(0, latest.requests_total - oldest.requests_total),
            max(0, latest.errors_total - oldest.errors_total),
            max(0.0, latest.response_time_sum_ms - oldest.response_time_sum_ms),
            max(0, latest.response_time_count - oldest.response_time_count),
        )

    def health(self, thresholds: HealthThresholds) -> HealthReport:
        gateways, workers = self.live("gateway"), self.live("worker")
        requests = errors = count = 0
        total_ms = 0.0
        for view in self.instances.values():
            if view.latest.role == "gateway" and view.latest in gateways:
                r, e, s, c = self._window_delta(view)
                requests, errors, total_ms, count = requests + r, errors + e, total_ms + s, count + c
        report = HealthReport(
            total_connections=sum(g.connections for g in gateways),
            total_users=sum(g.users for g in gateways),
            messages_per_minute=requests * 60 / self.window_s,
            average_response_ms=total_ms / count if count else 0.0,
            error_rate=errors / requests if requests else 0.0,
            uptime_ms=int((time.time() - self.started) * 1000),
        ).check(capacity=sum(g.max_connections for g in gateways), thresholds=thresholds)
        if not gateways:
            report.flag("critical", "no live gateways")
        if not workers:
            report.flag("critical", "no live workers")
        return report
