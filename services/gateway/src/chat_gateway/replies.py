"""Forward worker replies to the client connection they belong to, in order.

The callback does its bookkeeping before its first ``await``: aio-pika starts one task per
delivery, in delivery order, so queueing the frame synchronously keeps the order of the stream.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from aio_pika.abc import AbstractIncomingMessage

from chat_common.envelopes import ControlMessage, ReplyHeaders
from chat_gateway.broker import GatewayBroker
from chat_gateway.connection import Connection, PendingRequest
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.registry import ConnectionRegistry
from chat_gateway.tracing import end_message_span, reply_received

logger = logging.getLogger(__name__)


class ReplyRouter:
    def __init__(self, registry: ConnectionRegistry, broker: GatewayBroker, metrics: GatewayMetrics) -> None:
        self.registry = registry
        self.broker = broker
        self.metrics = metrics
        self._orphans: OrderedDict[str, None] = OrderedDict()

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            headers = ReplyHeaders.from_amqp(dict(message.headers or {}))
        except (KeyError, ValueError, TypeError):
            logger.warning("reply without valid routing headers dropped")
            return
        connection = self.registry.get(headers.connection_id)
        pending = connection.pending.get(headers.request_id) if connection is not None else None
        if connection is None or pending is None or connection.closed:
            await self._orphan(headers)
            return
        if headers.seq < pending.next_seq:
            return  # a duplicate the broker delivered twice
        pending.next_seq = headers.seq + 1
        connection.send(message.body.decode())
        self.metrics.frames_sent[headers.kind].inc()
        if headers.kind == "chunk" and pending.first_chunk_at is None:
            pending.first_chunk_at = time.monotonic()
            self.metrics.record_first_chunk(pending.first_chunk_at - pending.started, pending.span)
        elif headers.kind in ("end", "error"):
            reply_received(pending.span, headers.kind)
            self.finish(connection, pending, error_code="UPSTREAM_ERROR" if headers.kind == "error" else None)
        elif headers.kind == "start" and pending.span is not None:
            pending.span.add_event("response_start")

    def finish(
        self, connection: Connection, pending: PendingRequest, *, error_code: str | None, record: bool = True
    ) -> None:
        """The request is over for this connection: stop its timer, record its outcome."""
        connection.pending.pop(pending.request_id, None)
        if pending.timer is not None:
            pending.timer.cancel()
        self.metrics.in_flight.dec()
        outcome = "error" if error_code else "complete" if record else "abandoned"
        end_message_span(pending.span, error_code=error_code, outcome=outcome)
        if not record:
            return
        elapsed_ms = (time.monotonic() - pending.started) * 1000
        self.metrics.record_outcome(error_code=error_code, response_ms=None if error_code else elapsed_ms)
        if error_code:
            self.metrics.errors.labels(error_code).inc()

    async def _orphan(self, headers: ReplyHeaders) -> None:
        """Nobody waits for this answer any more: ask the worker (once) to stop generating it."""
        if headers.kind in ("end", "error") or headers.request_id in self._orphans:
            return
        self._orphans[headers.request_id] = None
        if len(self._orphans) > 10_000:
            self._orphans.popitem(last=False)
        await self.broker.publish_control(
            ControlMessage(kind="cancel", request_id=headers.request_id, reason="disconnected")
        )
