"""The health document of SPEC §4 and the rules that set its status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from chat_common.frames import iso_utc

Status = Literal["healthy", "warning", "critical"]
_RANK: dict[Status, int] = {"healthy": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    capacity_warning: float = 0.80
    capacity_critical: float = 0.95
    response_ms_warning: float = 3000.0
    error_rate_warning: float = 0.05
    error_rate_critical: float = 0.25


@dataclass(slots=True)
class HealthReport:
    total_connections: int
    total_users: int
    messages_per_minute: float
    average_response_ms: float
    error_rate: float
    uptime_ms: int
    status: Status = "healthy"
    issues: list[str] = field(default_factory=list)

    def flag(self, status: Status, issue: str) -> None:
        if _RANK[status] > _RANK[self.status]:
            self.status = status
        self.issues.append(issue)

    def check(self, *, capacity: int, thresholds: HealthThresholds) -> HealthReport:
        """Apply the rules shared by gateway and monitor (capacity, answer time, error rate)."""
        if capacity > 0:
            used = self.total_connections / capacity
            if used >= thresholds.capacity_critical:
                self.flag("critical", f"connections at {used:.0%} of capacity ({self.total_connections}/{capacity})")
            elif used >= thresholds.capacity_warning:
                self.flag("warning", f"connections at {used:.0%} of capacity ({self.total_connections}/{capacity})")
        if self.average_response_ms > thresholds.response_ms_warning:
            self.flag("warning", f"average response time {self.average_response_ms:.0f} ms")
        if self.error_rate >= thresholds.error_rate_critical:
            self.flag("critical", f"error rate {self.error_rate:.1%}")
        elif self.error_rate > thresholds.error_rate_warning:
            self.flag("warning", f"error rate {self.error_rate:.1%}")
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
