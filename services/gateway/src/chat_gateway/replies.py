"""Forward worker replies to the client connection they belong to, in order, one attempt at a time.

The callback does its bookkeeping before its first ``await``: aio-pika starts one task per
delivery, in delivery order, so queueing the frame synchronously keeps the order of the stream.

Attempts: a request redelivered to another worker (the first one died) is answered again from the
start, with a higher ``attempt`` in the reply headers and in its ``response_start``. The first frame
of a newer attempt resets the stream (the client is told by that ``response_start``, which carries
``attempt``, to drop what it has of the message); frames of an older attempt are dropped, so a
client never sees two attempts interleaved. An ``error`` ends the request whatever its attempt.

Resume: a connection that rejoins a chat naming an answer still streaming registers a placeholder
under the answer's message id; the first reply for that message id (the worker's replay) adopts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from aio_pika.abc import AbstractIncomingMessage

from chat_common.envelopes import ControlMessage, ReplyHeaders
from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import error_frame
from chat_gateway.broker import GatewayBroker
from chat_gateway.connection import Connection, PendingRequest
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.registry import ConnectionRegistry
from chat_gateway.tracing import end_message_span, reply_received

logger = logging.getLogger(__name__)

RESUME_WAIT_S = 5.0
"""how long a resumed connection waits for the worker's replay before it is told the answer is gone."""


class ReplyRouter:
    def __init__(
        self,
        registry: ConnectionRegistry,
        broker: GatewayBroker,
        metrics: GatewayMetrics,
        *,
        request_timeout_s: float = 120.0,
    ) -> None:
        self.registry = registry
        self.broker = broker
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self._orphans: OrderedDict[str, None] = OrderedDict()
        self._resuming: dict[str, tuple[PendingRequest, float]] = {}
        """answer message id -> the placeholder waiting for its replay here, and until when: at most
        one resume of an answer is in flight from this gateway."""
        self._background: set[asyncio.Task[None]] = set()

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            headers = ReplyHeaders.from_amqp(dict(message.headers or {}))
        except (KeyError, ValueError, TypeError):
            logger.warning("reply without valid routing headers dropped")
            return
        connection = self.registry.get(headers.connection_id)
        pending = None
        if connection is not None and not connection.closed:
            pending = connection.pending.get(headers.request_id) or self._adopt(connection, headers)
        if connection is None or pending is None or connection.closed:
            await self._orphan(headers)
            return
        if headers.attempt > pending.attempt:
            if pending.attempt:
                logger.info(
                    "request %s restarted by attempt %d on connection %s",
                    headers.request_id,
                    headers.attempt,
                    connection.id,
                )
            pending.attempt, pending.next_seq = headers.attempt, 0
        elif headers.attempt < pending.attempt and headers.kind != "error":
            return  # a frame of an attempt that was given up
        if headers.seq < pending.next_seq and headers.kind != "error":
            return  # a duplicate the broker delivered twice
        pending.next_seq = headers.seq + 1
        connection.send(message.body.decode())
        self.metrics.frames_sent[headers.kind].inc()
        if headers.kind == "chunk" and pending.first_chunk_at is None:
            pending.first_chunk_at = time.monotonic()
            self.metrics.record_first_chunk(pending.first_chunk_at - pending.started, pending.span)
        elif headers.kind in ("end", "error"):
            reply_received(pending.span, headers.kind)
            error_code = (headers.code or ErrorCode.UPSTREAM_ERROR.value) if headers.kind == "error" else None
            self.finish(connection, pending, error_code=error_code)
        elif headers.kind == "start" and pending.span is not None:
            pending.span.add_event("response_start")

    def finish(
        self, connection: Connection, pending: PendingRequest, *, error_code: str | None, record: bool = True
    ) -> None:
        """The request is over for this connection: stop its timer, record its outcome."""
        if connection.pending.get(pending.request_id) is pending:
            del connection.pending[pending.request_id]
        if connection.resumes.get(pending.assistant_message_id) is pending:
            del connection.resumes[pending.assistant_message_id]
        self._stop_waiting(pending)
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        self.metrics.in_flight.dec()
        outcome = "error" if error_code else "complete" if record else "abandoned"
        end_message_span(pending.span, error_code=error_code, outcome=outcome)
        if not record:
            return
        elapsed_ms = (time.monotonic() - pending.started) * 1000
        self.metrics.record_outcome(error_code=error_code, response_ms=None if error_code else elapsed_ms)
        if error_code:
            self.metrics.errors.labels(error_code).inc()

    def watch(self, connection: Connection, pending: PendingRequest, timeout_s: float | None = None) -> None:
        """Start the request's timer: without its end by then, the client gets ``TIMEOUT``."""
        if pending.timer is not None:
            pending.timer.cancel()
        delay = self.request_timeout_s if timeout_s is None else timeout_s
        pending.timer = asyncio.get_running_loop().call_later(delay, self.expire, connection, pending)

    def expire(self, connection: Connection, pending: PendingRequest) -> None:
        """The request's time is up: tell the client ``TIMEOUT`` and the worker to stop."""
        pending.timer = None
        waiting_resume = connection.resumes.get(pending.assistant_message_id) is pending
        if not waiting_resume and connection.pending.get(pending.request_id) is not pending:
            return
        self.finish(connection, pending, error_code=ErrorCode.TIMEOUT.value)
        if waiting_resume:
            text = "Answer not resumed: it is no longer streaming; it will be in the chat history when finished"
            connection.send(error_frame(ChatError(ErrorCode.TIMEOUT, text, message_id=pending.assistant_message_id)))
            return
        connection.send(error_frame(ChatError(ErrorCode.TIMEOUT, message_id=pending.assistant_message_id)))
        self._spawn(
            self.broker.publish_control(
                ControlMessage(
                    kind="cancel", request_id=pending.request_id, connection_id=connection.id, reason="timeout"
                )
            )
        )

    def resume_wait_left(self, connection: Connection, message_id: str) -> float | None:
        """Seconds until another resume may be asked here: one of ``message_id`` is waiting for its
        replay (on any connection of this gateway), or one of another answer on ``connection``."""
        now = time.monotonic()
        waiting = [self._resuming.get(message_id)]
        waiting += [self._resuming.get(other) for other in connection.resumes]
        left = [until - now for entry in waiting if entry is not None for until in (entry[1],)]
        return max(left) if left else None

    def expect_resume(self, connection: Connection, pending: PendingRequest) -> None:
        """Wait (``RESUME_WAIT_S``) for the replay of the answer ``pending.assistant_message_id``."""
        connection.resumes[pending.assistant_message_id] = pending
        self._resuming[pending.assistant_message_id] = (pending, time.monotonic() + RESUME_WAIT_S)
        self.metrics.in_flight.inc()
        self.watch(connection, pending, RESUME_WAIT_S)

    def _stop_waiting(self, pending: PendingRequest) -> None:
        entry = self._resuming.get(pending.assistant_message_id)
        if entry is not None and entry[0] is pending:
            del self._resuming[pending.assistant_message_id]

    def _adopt(self, connection: Connection, headers: ReplyHeaders) -> PendingRequest | None:
        pending = connection.resumes.pop(headers.message_id, None)
        if pending is None:
            return None
        self._stop_waiting(pending)
        pending.request_id = headers.request_id
        connection.pending[headers.request_id] = pending
        self.watch(connection, pending)
        return pending

    def _spawn(self, coroutine: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _orphan(self, headers: ReplyHeaders) -> None:
        """Nobody waits for this answer here any more: ask the worker (once) to stop generating it.

        The worker waits ``RESUME_GRACE`` before it acts on a disconnect, for the client to resume.
        """
        if headers.kind in ("end", "error") or headers.request_id in self._orphans:
            return
        self._orphans[headers.request_id] = None
        if len(self._orphans) > 10_000:
            self._orphans.popitem(last=False)
        await self.broker.publish_control(
            ControlMessage(
                kind="cancel",
                request_id=headers.request_id,
                connection_id=headers.connection_id,
                reason="disconnected",
            )
        )
