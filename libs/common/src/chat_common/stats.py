"""A sliding window of request outcomes in one-second buckets, for health figures (average and p95)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from chat_common.health import percentile


@dataclass(slots=True)
class _Bucket:
    second: int
    requests: int = 0
    errors: int = 0
    response_sum_ms: float = 0.0
    response_count: int = 0
    samples: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WindowFigures:
    requests: int
    errors: int
    average_response_ms: float
    window_s: int
    p95_response_ms: float = 0.0

    @property
    def per_minute(self) -> float:
        return self.requests * 60.0 / self.window_s

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


_SAMPLES_PER_SECOND = 200
"""answer times kept per second for percentiles (enough for a p95 at any load this process takes)."""


class RollingWindow:
    """Requests, errors and answer times over the last ``window_s`` seconds."""

    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self._buckets: deque[_Bucket] = deque()

    def _bucket(self) -> _Bucket:
        second = int(time.monotonic())
        if not self._buckets or self._buckets[-1].second != second:
            self._buckets.append(_Bucket(second))
            self._trim(second)
        return self._buckets[-1]

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0].second <= second - self.window_s:
            self._buckets.popleft()

    def add_request(self) -> None:
        self._bucket().requests += 1

    def add_result(self, *, error: bool, response_ms: float | None = None) -> None:
        bucket = self._bucket()
        if error:
            bucket.errors += 1
        if response_ms is not None:
            bucket.response_sum_ms += response_ms
            bucket.response_count += 1
            if len(bucket.samples) < _SAMPLES_PER_SECOND:
                bucket.samples.append(response_ms)

    def figures(self) -> WindowFigures:
        self._trim(int(time.monotonic()))
        requests = sum(b.requests for b in self._buckets)
        errors = sum(b.errors for b in self._buckets)
        count = sum(b.response_count for b in self._buckets)
        total = sum(b.response_sum_ms for b in self._buckets)
        samples = [value for b in self._buckets for value in b.samples]
        return WindowFigures(
            requests, errors, total / count if count else 0.0, self.window_s, percentile(samples, 0.95)
        )
