"""The monitor's view of the cluster: a sliding window of heartbeats per live instance.

Every instance's counters are cumulative, so the figures over the window are the difference between
its latest heartbeat and the last one before the window began (or zero for an instance that started
inside the window): a lost heartbeat loses no request. Lists of answer times cover one heartbeat
interval each, so the window's percentiles are taken over the lists received inside it. Times are
the monitor's own (when a heartbeat arrived), so clock skew between hosts does not matter.

An instance silent for longer than ``INSTANCE_SILENCE_TIMEOUT`` leaves the live set and is kept as
*gone* until it comes back, or until its role has as many live instances again as before it fell
silent (a replacement, e.g. a restarted pod with a new name). A process that stops in order says
so in its last heartbeat (``stopping``) and is forgotten without being counted as gone.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from chat_common.envelopes import Heartbeat
from chat_common.health import percentile

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class InstanceView:
    latest: Heartbeat
    received: float
    """monotonic time of the latest heartbeat."""
    history: deque[tuple[float, Heartbeat]] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class GoneInstance:
    instance_id: str
    role: str
    last_seen: float
    """monotonic."""
    last_seen_ms: int
    live_before: int
    """live instances of its role just before it fell silent."""


@dataclass(frozen=True, slots=True)
class WindowFigures:
    """One instance's (or the sum of several instances') figures over the sliding window."""

    requests: int = 0
    errors: int = 0
    response_sum_ms: float = 0.0
    response_count: int = 0
    response_ms: tuple[float, ...] = ()
    first_chunk_ms: tuple[float, ...] = ()

    def __add__(self, other: WindowFigures) -> WindowFigures:
        return WindowFigures(
            self.requests + other.requests,
            self.errors + other.errors,
            self.response_sum_ms + other.response_sum_ms,
            self.response_count + other.response_count,
            self.response_ms + other.response_ms,
            self.first_chunk_ms + other.first_chunk_ms,
        )

    def per_minute(self, window_s: float) -> float:
        return self.requests * 60.0 / window_s

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def average_ms(self) -> float:
        return self.response_sum_ms / self.response_count if self.response_count else 0.0

    def percentiles(self, *, first_chunk: bool = False) -> dict[str, float]:
        values = list(self.first_chunk_ms if first_chunk else self.response_ms)
        return {
            "p50": round(percentile(values, 0.50), 1),
            "p90": round(percentile(values, 0.90), 1),
            "p95": round(percentile(values, 0.95), 1),
            "p99": round(percentile(values, 0.99), 1),
            "max": round(max(values, default=0.0), 1),
            "count": len(values),
        }


class ClusterView:
    def __init__(self, *, silence_s: float, window_s: float = 60.0) -> None:
        self.silence_s = silence_s
        self.window_s = window_s
        self.instances: dict[str, InstanceView] = {}
        self.gone: dict[str, GoneInstance] = {}
        self.started = time.time()

    # ------------------------------------------------------------------ heartbeats in

    def observe(self, beat: Heartbeat, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if beat.stopping:
            if self.instances.pop(beat.instance_id, None) is not None:
                logger.info("%s %s stopped in order", beat.role, beat.instance_id)
            self.gone.pop(beat.instance_id, None)
            return
        if self.gone.pop(beat.instance_id, None) is not None:
            logger.info("%s %s is back", beat.role, beat.instance_id)
        view = self.instances.get(beat.instance_id)
        if view is None:
            logger.info("%s %s joined", beat.role, beat.instance_id)
            view = self.instances[beat.instance_id] = InstanceView(beat, now)
        view.latest, view.received = beat, now
        view.history.append((now, beat))
        # keep one heartbeat from before the window: the baseline of the window's differences
        while len(view.history) > 2 and view.history[1][0] <= now - self.window_s:
            view.history.popleft()
        self._forget_replaced(beat.role, now)

    def _forget_replaced(self, role: str, now: float) -> None:
        live = len(self.live(role, now=now))
        for gone in [g for g in self.gone.values() if g.role == role and live >= g.live_before]:
            logger.info("%s %s replaced: %d %ss live again", role, gone.instance_id, live, role)
            del self.gone[gone.instance_id]

    def sweep(self, *, now: float | None = None) -> list[GoneInstance]:
        """Move instances silent for longer than the silence timeout to ``gone``; return them."""
        now = time.monotonic() if now is None else now
        silent = [view for view in self.instances.values() if view.received < now - self.silence_s]
        fallen: list[GoneInstance] = []
        for view in silent:
            role = view.latest.role
            live_before = len(self.live(role, now=now)) + 1
            del self.instances[view.latest.instance_id]
            gone = GoneInstance(
                view.latest.instance_id, role, view.received, view.latest.timestamp_ms, live_before=live_before
            )
            self.gone[gone.instance_id] = gone
            fallen.append(gone)
            logger.warning("%s %s fell silent (no heartbeat for %.1f s)", role, gone.instance_id, now - view.received)
        return fallen

    # ------------------------------------------------------------------ figures out

    def live_views(self, role: str | None = None, *, now: float | None = None) -> list[InstanceView]:
        now = time.monotonic() if now is None else now
        cutoff = now - self.silence_s
        return [
            view
            for view in self.instances.values()
            if view.received >= cutoff and (role is None or view.latest.role == role)
        ]

    def live(self, role: str | None = None, *, now: float | None = None) -> list[Heartbeat]:
        return [view.latest for view in self.live_views(role, now=now)]

    def figures(self, view: InstanceView, *, now: float | None = None) -> WindowFigures:
        now = time.monotonic() if now is None else now
        start = now - self.window_s
        latest = view.latest
        if latest.started_ms >= int(time.time() * 1000) - self.window_s * 1000:
            baseline = _Zero  # started inside the window: every count it has is in the window
        else:
            before = [beat for received, beat in view.history if received <= start]
            baseline = before[-1] if before else view.history[0][1]
        response: list[float] = []
        first: list[float] = []
        for received, beat in view.history:
            if received > start:
                response.extend(beat.recent_response_ms)
                first.extend(beat.recent_first_chunk_ms)
        return WindowFigures(
            requests=max(0, latest.requests_total - baseline.requests_total),
            errors=max(0, latest.errors_total - baseline.errors_total),
            response_sum_ms=max(0.0, latest.response_time_sum_ms - baseline.response_time_sum_ms),
            response_count=max(0, latest.response_time_count - baseline.response_time_count),
            response_ms=tuple(response),
            first_chunk_ms=tuple(first),
        )

    def role_figures(self, role: str, *, now: float | None = None) -> WindowFigures:
        total = WindowFigures()
        for view in self.live_views(role, now=now):
            total = total + self.figures(view, now=now)
        return total


_Zero = Heartbeat(instance_id="", role="gateway", timestamp_ms=0, started_ms=0)
"""the counters of a process that has just started."""
