"""The health document of SPEC §4 and the rules that set its status.

Rules (every threshold is a setting, see the README's "Health and alerts"):

==========================  ==========================================  ===========
rule                        condition                                   status
==========================  ==========================================  ===========
``capacity``                connections ≥ HEALTH_CAPACITY_WARNING of    warning
                            WS_MAX_CONNECTIONS (summed over gateways)
                            ≥ HEALTH_CAPACITY_CRITICAL                  critical
``response_time``           p95 answer time > HEALTH_RESPONSE_P95_WARNING warning
``error_rate``              errors / requests > HEALTH_ERROR_RATE_WARNING warning
                            ≥ HEALTH_ERROR_RATE_CRITICAL                critical
                            (only with HEALTH_ERROR_RATE_MIN_REQUESTS
                            requests or more in the window)
(monitor only, see chat_monitor.rules: live workers, gateways, backlog, memory, silent instances)
==========================  ==========================================  ===========

Each issue has a stable ``key``: the monitor raises one alert per key while the issue lasts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from chat_common.frames import iso_utc
from chat_common.settings import HealthSettings

Status = Literal["healthy", "warning", "critical"]
_RANK: dict[Status, int] = {"healthy": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    capacity_warning: float = 0.80
    capacity_critical: float = 0.95
    response_p95_ms_warning: float = 3000.0
    error_rate_warning: float = 0.05
    error_rate_critical: float = 0.25
    error_rate_min_requests: int = 20
    """requests the window must hold before its error rate counts: one failure on a quiet gateway is not 100 %."""
    queue_warning: int = 100
    backlog_growth_window_s: float = 30.0
    memory_warning_bytes: int = 1024 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: HealthSettings) -> HealthThresholds:
        return cls(
            capacity_warning=settings.health_capacity_warning,
            capacity_critical=settings.health_capacity_critical,
            response_p95_ms_warning=float(settings.health_response_p95_warning),
            error_rate_warning=settings.health_error_rate_warning,
            error_rate_critical=settings.health_error_rate_critical,
            error_rate_min_requests=settings.health_error_rate_min_requests,
            queue_warning=settings.health_queue_warning,
            backlog_growth_window_s=settings.health_backlog_growth_window_s,
            memory_warning_bytes=settings.health_memory_warning_mb * 1024 * 1024,
        )


@dataclass(frozen=True, slots=True)
class Issue:
    key: str
    """stable name of the condition, e.g. ``capacity.warning`` or ``instance_silent:wk-1``."""
    status: Status
    message: str


@dataclass(slots=True)
class HealthReport:
    total_connections: int
    total_users: int
    messages_per_minute: float
    average_response_ms: float
    error_rate: float
    uptime_ms: int
    p95_response_ms: float = 0.0
    window_requests: int | None = None
    """requests behind ``error_rate``; ``None`` when unknown (then the rate counts whatever it is)."""
    status: Status = "healthy"
    found: list[Issue] = field(default_factory=list)

    @property
    def issues(self) -> list[str]:
        return [issue.message for issue in self.found]

    def flag(self, status: Status, issue: str, *, key: str | None = None) -> None:
        if _RANK[status] > _RANK[self.status]:
            self.status = status
        self.found.append(Issue(key or issue, status, issue))

    def check(self, *, capacity: int, thresholds: HealthThresholds) -> HealthReport:
        """Apply the rules shared by gateway and monitor (capacity, answer time, error rate)."""
        if capacity > 0:
            used = self.total_connections / capacity
            text = f"connections at {used:.0%} of capacity ({self.total_connections}/{capacity})"
            if used >= thresholds.capacity_critical:
                self.flag("critical", text, key="capacity.critical")
            elif used >= thresholds.capacity_warning:
                self.flag("warning", text, key="capacity.warning")
        if self.p95_response_ms > thresholds.response_p95_ms_warning:
            self.flag(
                "warning",
                f"p95 response time {self.p95_response_ms:.0f} ms is over {thresholds.response_p95_ms_warning:.0f} ms",
                key="response_time",
            )
        if self.window_requests is not None and self.window_requests < thresholds.error_rate_min_requests:
            return self  # too few requests for a rate to mean anything
        if self.error_rate >= thresholds.error_rate_critical:
            self.flag("critical", f"error rate {self.error_rate:.1%}", key="error_rate.critical")
        elif self.error_rate > thresholds.error_rate_warning:
            self.flag("warning", f"error rate {self.error_rate:.1%}", key="error_rate.warning")
        return self

    @property
    def http_status(self) -> int:
        return 503 if self.status == "critical" else 200

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "timestamp": iso_utc(datetime.now(UTC)),
            "metrics": {
                "totalConnections": self.total_connections,
                "totalUsers": self.total_users,
                "messagesPerMinute": round(self.messages_per_minute, 2),
                "averageResponseTime": round(self.average_response_ms),
                "errorRate": round(self.error_rate, 4),
                "uptime": self.uptime_ms,
            },
            "issues": self.issues,
        }


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (0 when empty); ``values`` need not be sorted."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]
