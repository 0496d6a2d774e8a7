"""What one load run counts and times, mergeable across generator processes."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max in milliseconds, rounded to 0.1 ms, and the sample count."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }


@dataclass
class Recorder:
    """Counts and latency samples (ms, from sending ``send_message``) of one generator process."""

    connections_opened: int = 0
    connections_joined: int = 0
    connections_refused: Counter[str] = field(default_factory=Counter)
    connections_lost: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    answered: int = 0
    incomplete: int = 0
    unfinished: int = 0
    skipped_busy: int = 0
    chunks: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    join_ms: list[float] = field(default_factory=list)
    accepted_ms: list[float] = field(default_factory=list)
    first_chunk_ms: list[float] = field(default_factory=list)
    end_ms: list[float] = field(default_factory=list)
    completed: list[tuple[float, float | None, float]] = field(default_factory=list)
    """every complete answer as (``time.monotonic()`` at its end, first chunk ms, end ms): the clock
    is the box's CLOCK_MONOTONIC, the same in every generator process, so windows can be cut."""

    @property
    def in_flight(self) -> int:
        return self.sent - self.answered - self.incomplete - sum(self.errors.values()) - self.unfinished

    def counts(self) -> dict[str, Any]:
        """The counters only (cheap: sent with every progress line)."""
        return {
            "connections_opened": self.connections_opened,
            "connections_joined": self.connections_joined,
            "connections_refused": dict(self.connections_refused),
            "connections_lost": dict(self.connections_lost),
            "sent": self.sent,
            "answered": self.answered,
            "incomplete": self.incomplete,
            "unfinished": self.unfinished,
            "skipped_busy": self.skipped_busy,
            "chunks": self.chunks,
            "errors": dict(self.errors),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.counts(),
            "join_ms": self.join_ms,
            "accepted_ms": self.accepted_ms,
            "first_chunk_ms": self.first_chunk_ms,
            "end_ms": self.end_ms,
            "completed": self.completed,
        }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the ``counts``/``to_dict`` documents of several processes."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                bucket: Counter[str] = Counter(total.get(key, {}))
                bucket.update(value)
                total[key] = dict(bucket)
            elif isinstance(value, list):
                total[key] = [*total.get(key, []), *value]
            else:
                total[key] = total.get(key, 0) + value
    return total


def window(completed: list[tuple[float, float | None, float]], t0: float, t1: float) -> dict[str, Any]:
    """The answers completed within ``[t0, t1]``: how many, per second, and their latencies."""
    inside = [(first, end) for at, first, end in completed if t0 <= at <= t1]
    seconds = t1 - t0
    return {
        "t0": t0,
        "t1": t1,
        "seconds": round(seconds, 3),
        "answered": len(inside),
        "answers_per_s": round(len(inside) / seconds, 1) if seconds > 0 else None,
        "latency_ms": {
            "first_chunk": summary([first for first, _ in inside if first is not None]),
            "end": summary([end for _, end in inside]),
        },
    }
