"""Prometheus metrics of one gateway process, and the rolling figures its health reports."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chat_common.metrics import TimedFigure, counts_by_label, register_process_collectors
from chat_common.stats import RollingWindow

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)


class GatewayMetrics:
    def __init__(self, *, window_s: int = 60) -> None:
        self.registry = CollectorRegistry()
        register_process_collectors(self.registry)
        self.connections = Gauge("chat_gateway_connections", "Open WebSocket connections", registry=self.registry)
        self.users = Gauge("chat_gateway_users", "Distinct users connected", registry=self.registry)
        self.frames_in = Counter(
            "chat_gateway_frames_received", "Client frames by type", ["type"], registry=self.registry
        )
        self.refusals = Counter(
            "chat_gateway_refusals",
            "Refused handshakes, connections and frames by error code and the check that refused",
            ["code", "reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "chat_gateway_errors", "Error frames sent to clients by code", ["code"], registry=self.registry
        )
        sent = Counter(
            "chat_gateway_frames_sent", "Answer frames forwarded to clients by kind", ["kind"], registry=self.registry
        )
        # bound once: the reply path increments one of these per frame without a label lookup
        self.frames_sent = {kind: sent.labels(kind) for kind in ("start", "chunk", "end", "error")}
        self.requests = Counter("chat_gateway_requests", "Chat requests published", registry=self.registry)
        self.in_flight = Gauge("chat_gateway_in_flight", "Requests awaiting their answer", registry=self.registry)
        self.response = TimedFigure(
            Histogram(
                "chat_gateway_response_seconds",
                "Time from accepting a message to response_end",
                buckets=_LATENCY_BUCKETS,
                registry=self.registry,
            )
        )
        self.first = TimedFigure(
            Histogram(
                "chat_gateway_first_chunk_seconds",
                "Time from accepting a message to its first response_chunk",
                buckets=_LATENCY_BUCKETS,
                registry=self.registry,
            )
        )
        self.sweeps = Counter("chat_gateway_sweeps", "Inactivity sweeps run", registry=self.registry)
        self.sweep_lag = Gauge(
            "chat_gateway_sweep_lag_seconds",
            "How late the last inactivity sweep started after its schedule (a stalled loop shows here)",
            registry=self.registry,
        )
        self.window = RollingWindow(window_s)
        self.requests_total = 0
        self.errors_total = 0

    def record_request(self) -> None:
        self.requests.inc()
        self.window.add_request()
        self.requests_total += 1

    def record_outcome(self, *, error_code: str | None, response_ms: float | None) -> None:
        self.window.add_result(error=error_code is not None, response_ms=response_ms)
        if error_code is not None:
            self.errors_total += 1
        if response_ms is not None:
            self.response.observe_ms(response_ms)

    def record_finish(self, *, error_code: str | None, response_ms: float | None) -> None:
        """A request is over (its answer ended, failed or timed out): no longer in flight."""
        self.in_flight.dec()
        self.record_outcome(error_code=error_code, response_ms=response_ms)
        if error_code:
            self.errors.labels(error_code).inc()

    def record_reply(
        self,
        kind: str,
        *,
        first_chunk_s: float | None,
        final: bool,
        error_code: str | None,
        response_ms: float | None,
    ) -> None:
        """One answer frame forwarded; ``final``: it ended its request."""
        self.frames_sent[kind].inc()
        if first_chunk_s is not None:
            self.first.observe(first_chunk_s)
        if final:
            self.record_finish(error_code=error_code, response_ms=response_ms)

    def errors_by_code(self) -> dict[str, int]:
        return counts_by_label(self.errors, "code")
