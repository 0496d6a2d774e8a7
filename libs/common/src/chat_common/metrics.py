"""Prometheus helpers shared by every service's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, GCCollector, PlatformCollector, ProcessCollector


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
