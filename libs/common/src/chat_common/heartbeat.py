"""The heartbeat a gateway or a worker publishes, built in one place from its process figures."""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

from chat_common.broker import now_ms
from chat_common.envelopes import Heartbeat
from chat_common.metrics import TimedFigure
from chat_common.process import rss_bytes
from chat_common.samples import RequestSampler


class ProcessFigures(Protocol):
    """What both services' metrics expose for the heartbeat."""

    requests_total: int
    errors_total: int
    response: TimedFigure
    """request to its end (gateway: ``response_end`` sent; worker: answer stored)."""
    first: TimedFigure
    """request to its first piece (gateway: first chunk sent; worker: the model's first token)."""

    def errors_by_code(self) -> dict[str, int]: ...


def build_heartbeat(
    role: Literal["gateway", "worker"],
    *,
    instance_id: str,
    started: float,
    figures: ProcessFigures,
    sampler: RequestSampler,
    broker_connected: bool,
    **role_fields: Any,
) -> Heartbeat:
    """This process's heartbeat now; ``role_fields`` are the role's own (connections, concurrency, tokens...).

    Reading it takes the recent values and samples: call it once per heartbeat.
    """
    slowest, failed = sampler.take()
    return Heartbeat(
        instance_id=instance_id,
        role=role,
        timestamp_ms=now_ms(),
        started_ms=int(started * 1000),
        requests_total=figures.requests_total,
        errors_total=figures.errors_total,
        errors_by_code=figures.errors_by_code(),
        response_time_sum_ms=figures.response.sum_ms,
        response_time_count=figures.response.count,
        recent_response_ms=figures.response.take_recent_ms(),
        recent_first_chunk_ms=figures.first.take_recent_ms(),
        rss_bytes=rss_bytes(),
        cpu_seconds=time.process_time(),
        broker_connected=broker_connected,
        slow_requests=slowest,
        failed_requests=failed,
        **role_fields,
    )
