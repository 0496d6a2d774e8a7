"""Prometheus helpers shared by every service's registry: process collectors, label counts, timed figures."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector


def register_process_collectors(registry: CollectorRegistry) -> None:
    """Memory, CPU, open files, GC and Python version (``process_*``, ``python_*``), as the default registry has."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


def counts_by_label(counter: Counter, label: str) -> dict[str, int]:
    """The ``_total`` value of each label value of a one-label counter (read at heartbeat time, not per event)."""
    counts: dict[str, int] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and label in sample.labels:
                counts[sample.labels[label]] = int(sample.value)
    return counts


RECENT_CAP = 1000
"""values kept between two heartbeats (enough for the monitor's percentiles; the histogram has the rest)."""


class TimedFigure:
    """One latency figure: its Prometheus histogram, the running sum and count, and the values since the
    last heartbeat (for the monitor's cluster percentiles)."""

    __slots__ = ("_recent", "count", "histogram", "sum_ms")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.sum_ms = 0.0
        self.count = 0
        self._recent: list[float] = []

    def observe(self, seconds: float) -> None:
        self.observe_ms(seconds * 1000)

    def observe_ms(self, ms: float) -> None:
        self.histogram.observe(ms / 1000)
        self.sum_ms += ms
        self.count += 1
        if len(self._recent) < RECENT_CAP:
            self._recent.append(ms)

    def take_recent_ms(self) -> list[float]:
        recent, self._recent = self._recent, []
        return recent
