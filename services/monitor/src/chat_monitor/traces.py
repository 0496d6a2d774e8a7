"""The traces that matter: the slowest and the failed recent requests, merged from every process.

Gateways and workers each report, with their heartbeats, their slowest and failed requests (trace
id, stage timings, error code). The same request seen by a gateway and a worker shares a trace id;
its stages are merged under ``gateway.*`` and ``worker.*``. Each entry links to Jaeger's UI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chat_common.envelopes import RequestSample

_STAGE_ORDER = [
    "gateway.db",
    "gateway.publish",
    "worker.queue_wait",
    "worker.db",
    "worker.llm_http",
    "worker.first_token",
    "worker.llm",
    "gateway.response_start",
    "gateway.first_chunk",
    "worker.total",
    "gateway.total",
]
"""the order in which a request meets its stages, for reading; unknown stages come last."""


def _stage_rank(name: str) -> tuple[int, str]:
    return (_STAGE_ORDER.index(name) if name in _STAGE_ORDER else len(_STAGE_ORDER), name)


@dataclass(slots=True)
class TraceEntry:
    trace_id: str
    request_id: str
    chat_type: str
    started_ms: int
    total_ms: float
    error_code: str | None
    stages: dict[str, float] = field(default_factory=dict)
    instances: list[str] = field(default_factory=list)
    seen: float = field(default_factory=time.monotonic)
    from_gateway: bool = False


class TraceBook:
    def __init__(self, *, jaeger_ui_url: str, keep_s: float = 900.0, slowest: int = 10, failed: int = 20) -> None:
        self.jaeger_ui_url = jaeger_ui_url.rstrip("/")
        self.keep_s = keep_s
        self.slowest_count = slowest
        self.failed_count = failed
        self._entries: dict[str, TraceEntry] = {}

    def add(self, role: str, instance_id: str, sample: RequestSample) -> None:
        entry = self._entries.get(sample.trace_id)
        if entry is None:
            entry = self._entries[sample.trace_id] = TraceEntry(
                sample.trace_id, sample.request_id, sample.chat_type, sample.started_ms, sample.total_ms, None
            )
        entry.seen = time.monotonic()
        entry.instances.append(f"{role}:{instance_id}")
        entry.stages.update({f"{role}.{name}": ms for name, ms in sample.stages.items()})
        entry.stages[f"{role}.total"] = round(sample.total_ms, 2)
        if role == "gateway":
            # the gateway's view spans the whole request: it is the one the user waited for
            entry.from_gateway, entry.total_ms, entry.started_ms = True, sample.total_ms, sample.started_ms
        elif not entry.from_gateway:
            entry.total_ms = max(entry.total_ms, sample.total_ms)
        entry.error_code = entry.error_code or sample.error_code
        entry.request_id = entry.request_id or sample.request_id
        entry.chat_type = entry.chat_type or sample.chat_type
        if len(self._entries) > 5000:
            self._trim(force=True)

    def _trim(self, *, force: bool = False) -> None:
        cutoff = time.monotonic() - self.keep_s
        for trace_id in [t for t, e in self._entries.items() if e.seen < cutoff]:
            del self._entries[trace_id]
        if force and len(self._entries) > 5000:
            keep = self.slowest() + self.failed()
            wanted = {entry["traceId"] for entry in keep}
            self._entries = {t: e for t, e in self._entries.items() if t in wanted}

    def slowest(self) -> list[dict[str, Any]]:
        self._trim()
        ok = [e for e in self._entries.values() if e.error_code is None]
        ok.sort(key=lambda e: e.total_ms, reverse=True)
        return [self._json(e) for e in ok[: self.slowest_count]]

    def failed(self) -> list[dict[str, Any]]:
        self._trim()
        bad = [e for e in self._entries.values() if e.error_code is not None]
        bad.sort(key=lambda e: e.started_ms, reverse=True)
        return [self._json(e) for e in bad[: self.failed_count]]

    def _json(self, entry: TraceEntry) -> dict[str, Any]:
        return {
            "traceId": entry.trace_id,
            "requestId": entry.request_id,
            "chatType": entry.chat_type,
            "startedAt": entry.started_ms,
            "totalMs": round(entry.total_ms, 1),
            "errorCode": entry.error_code,
            "stages": {name: entry.stages[name] for name in sorted(entry.stages, key=_stage_rank)},
            "instances": entry.instances,
            "jaegerUrl": f"{self.jaeger_ui_url}/trace/{entry.trace_id}",
        }
