"""Prometheus metrics of one worker process, and the figures its heartbeat carries."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chat_common.metrics import TimedFigure, counts_by_label, register_process_collectors
from llm_worker.tracing import ERROR_OUTCOMES

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        register_process_collectors(self.registry)
        self.requests = Counter(
            "chat_worker_requests", "Requests handled by outcome", ["outcome"], registry=self.registry
        )
        self.in_flight = Gauge("chat_worker_in_flight", "Requests being answered", registry=self.registry)
        self.tokens = Counter("chat_worker_llm_tokens", "LLM tokens by kind", ["kind"], registry=self.registry)
        self.first = TimedFigure(
            Histogram(
                "chat_worker_first_token_seconds",
                "Time from taking a request to the model's first token",
                buckets=_BUCKETS,
                registry=self.registry,
            )
        )
        self.first_token_seconds = self.first
        self.response = TimedFigure(
            Histogram(
                "chat_worker_answer_seconds",
                "Time from taking a request to storing its answer",
                buckets=_BUCKETS,
                registry=self.registry,
            )
        )
        self.chunks = Counter("chat_worker_chunks", "Reply chunks published", registry=self.registry)
        self.requests_total = 0
        self.errors_total = 0

    def record(self, outcome: str, *, answer_ms: float | None = None) -> None:
        """Count a request's outcome (``outcomes.settle`` marks its span)."""
        self.requests.labels(outcome).inc()
        self.requests_total += 1
        if outcome in ("upstream_error", "store_error", "data_error"):
            self.errors_total += 1
        if answer_ms is not None:
            self.response.observe_ms(answer_ms)

    def tokens_by_kind(self) -> dict[str, int]:
        return counts_by_label(self.tokens, "kind")

    def errors_by_code(self) -> dict[str, int]:
        by_outcome = counts_by_label(self.requests, "outcome")
        codes: dict[str, int] = {}
        for outcome, code in ERROR_OUTCOMES.items():
            if by_outcome.get(outcome):
                codes[code] = codes.get(code, 0) + by_outcome[outcome]
        return codes
