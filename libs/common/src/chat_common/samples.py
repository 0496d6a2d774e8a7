"""The slowest and the failed recent requests of this process, taken from their spans.

``RequestSampler`` is a span processor. A request's root span in a process (the gateway's
``chat.message``, the worker's ``process`` span) carries ``chat.sample=True``; the spans that end
inside its trace before it add their durations to named stages (``chat.stage`` attribute, or the
instrumentation that made them: asyncpg → ``db``); events on the root span
and on its descendants (``first_chunk``, ``first_token``) become stages measured from the root's
start. When the root
ends, the request becomes a ``RequestSample``; ``take()`` hands the slowest and the failed ones
since the previous call to the heartbeat. Work per span is a few dictionary operations.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from chat_common.envelopes import RequestSample

SAMPLE_ATTRIBUTE = "chat.sample"
STAGE_ATTRIBUTE = "chat.stage"
_SCOPE_STAGES = {
    "opentelemetry.instrumentation.asyncpg": "db",
}
_MAX_OPEN_TRACES = 20_000


class RequestSampler(SpanProcessor):
    def __init__(self, *, keep: int = 5) -> None:
        self.keep = keep
        self._open: OrderedDict[int, tuple[int, dict[str, float]]] = OrderedDict()
        """trace id → (start of its root span in ns, stages so far)."""
        self._slowest: list[tuple[float, int, RequestSample]] = []
        self._failed: deque[RequestSample] = deque(maxlen=keep * 4)
        self._order = itertools.count()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        attributes = span.attributes or {}
        if attributes.get(SAMPLE_ATTRIBUTE):
            self._open[span.context.trace_id] = (span.start_time or 0, {})
            if len(self._open) > _MAX_OPEN_TRACES:
                self._open.popitem(last=False)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or span.start_time is None or span.end_time is None:
            return
        attributes = span.attributes or {}
        if attributes.get(SAMPLE_ATTRIBUTE):
            self._finish_root(span, context.trace_id, span.start_time, span.end_time)
            return
        entry = self._open.get(context.trace_id)
        if entry is None:
            return
        root_start, stages = entry
        scope = span.instrumentation_scope
        stage = attributes.get(STAGE_ATTRIBUTE) or _SCOPE_STAGES.get(scope.name if scope else "")
        if isinstance(stage, str):
            stages[stage] = stages.get(stage, 0.0) + (span.end_time - span.start_time) / 1e6
        for event in span.events:
            stages.setdefault(event.name, (event.timestamp - root_start) / 1e6)

    def _finish_root(self, span: ReadableSpan, trace_id: int, start: int, end: int) -> None:
        _, stages = self._open.pop(trace_id, (start, {}))
        attributes = span.attributes or {}
        if attributes.get("chat.outcome") == "abandoned":
            return  # the client went away: its duration says nothing about the system
        for event in span.events:
            stages.setdefault(event.name, (event.timestamp - start) / 1e6)
        queue_wait = attributes.get("chat.queue_wait_ms")
        if isinstance(queue_wait, int | float):
            stages["queue_wait"] = float(queue_wait)
        error = attributes.get("chat.error_code")
        sample = RequestSample(
            trace_id=format(trace_id, "032x"),
            request_id=str(attributes.get("chat.request_id", "")),
            chat_type=str(attributes.get("chat.type", "")),
            started_ms=start // 1_000_000,
            total_ms=(end - start) / 1e6,
            stages={name: round(ms, 2) for name, ms in stages.items()},
            error_code=str(error) if error else None,
        )
        if sample.error_code:
            self._failed.append(sample)
            return
        entry = (sample.total_ms, next(self._order), sample)
        if len(self._slowest) < self.keep:
            heapq.heappush(self._slowest, entry)
        elif entry[0] > self._slowest[0][0]:
            heapq.heapreplace(self._slowest, entry)

    def take(self) -> tuple[list[RequestSample], list[RequestSample]]:
        """The slowest successful and the failed requests since the previous call (slowest first)."""
        slowest = [entry[2] for entry in sorted(self._slowest, reverse=True)]
        failed = list(self._failed)
        self._slowest.clear()
        self._failed.clear()
        return slowest, failed

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
