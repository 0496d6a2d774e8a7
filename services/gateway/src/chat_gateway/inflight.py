"""The requests in flight on this gateway: each ``PendingRequest`` from open to finish, its timer, gauge and span.

``InFlight`` is the only writer of ``Connection.pending`` and ``Connection.resumes`` and the only
place that moves ``chat_gateway_in_flight``. A pending request is a small state machine::

    open ──(deliver)──▶ forwarding ──(end / error)──▶ finished
      │                    └──(timer)──▶ finished (TIMEOUT, the worker told to stop)
    resuming ──(first reply of the answer: adopt)──▶ forwarding
      └──(RESUME_WAIT_S)──▶ finished (TIMEOUT: the answer is no longer streaming)

and ``abandon`` finishes everything of a connection that went away (no outcome recorded).

Attempts: a request redelivered to another worker (the first one died) is answered again from the
start, with a higher ``attempt`` in the reply headers and in its ``response_start``. The first frame
of a newer attempt resets the stream (the client is told by that ``response_start``, which carries
``attempt``, to drop what it has of the message); frames of an older attempt are dropped, so a
client never sees two attempts interleaved. An ``error`` ends the request whatever its attempt.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span

from chat_common.envelopes import TERMINAL_KINDS, ChatRequest, ControlMessage
from chat_common.errors import ChatError, ErrorCode
from chat_common.reply_batch import Reply
from chat_common.server_frames import error_frame
from chat_gateway.connection import Connection
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.refusals import Refusal
from chat_gateway.tracing import end_message_span, trace_reply

logger = logging.getLogger(__name__)

RESUME_WAIT_S = 5.0
"""how long a resumed connection waits for the worker's replay before it is told the answer is gone."""

PublishControl = Callable[[ControlMessage], Coroutine[Any, Any, None]]


class Phase(enum.Enum):
    OPEN = "open"
    """accepted, published or being published; no frame of the answer yet."""
    RESUMING = "resuming"
    """a placeholder for an answer streaming elsewhere, until the worker's replay adopts it."""
    FORWARDING = "forwarding"
    """frames of the answer are being forwarded to the connection."""
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class PendingRequest:
    request_id: str
    user_message_id: str
    assistant_message_id: str
    chat_id: str
    started: float
    phase: Phase = Phase.OPEN
    timer: asyncio.TimerHandle | None = None
    next_seq: int = 0
    attempt: int = 0
    """the request's delivery whose frames are being forwarded (0 before the first frame)."""
    first_chunk_at: float | None = None
    span: Span | None = None
    """the message's root span (``chat_gateway.tracing``), ended when the request is over."""

    def accepts(self, reply: Reply) -> bool:
        """Whether the frame ``reply`` is forwarded: the stream moves to a newer attempt,
        drops an older one's frames and the broker's duplicates; an ``error`` always goes."""
        if reply.attempt > self.attempt:
            if self.attempt:
                logger.info("request %s restarted by attempt %d", reply.request_id, reply.attempt)
            self.attempt, self.next_seq = reply.attempt, 0
        elif reply.kind != "error" and (reply.attempt < self.attempt or reply.seq < self.next_seq):
            return False
        self.next_seq = reply.seq + 1
        return True


class InFlight:
    """Owns the pending requests of every connection of this gateway (see the module's docstring).

    ``publish_control`` sends ``cancel`` to the workers when a request times out; those publishes
    are tasks owned here (``close`` waits for them). ``clock`` (monotonic seconds) times the answers
    and the resume waits; the timers themselves run on the event loop.
    """

    def __init__(
        self,
        metrics: GatewayMetrics,
        publish_control: PublishControl,
        *,
        request_timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self._clock = clock
        self.request_timeout_s = request_timeout_s
        self._publish_control = publish_control
        self._resuming: dict[str, tuple[PendingRequest, float]] = {}
        """answer message id -> the placeholder waiting for its replay here, and until when: at most
        one resume of an answer is in flight from this gateway."""
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ open

    def open(self, connection: Connection, request: ChatRequest, span: Span | None) -> PendingRequest:
        """A request accepted on ``connection``: counted, and timed out after ``REQUEST_TIMEOUT``."""
        pending = PendingRequest(
            request_id=request.request_id,
            user_message_id=request.user_message_id,
            assistant_message_id=request.assistant_message_id,
            chat_id=request.chat_id,
            started=self._clock(),
            span=span,
        )
        connection.pending[request.request_id] = pending
        self.metrics.in_flight.inc()
        self.metrics.record_request()
        self._watch(connection, pending, self.request_timeout_s)
        return pending

    def expect_resume(self, connection: Connection, message_id: str) -> bool:
        """Wait (``RESUME_WAIT_S``) on ``connection`` for the replay of the answer ``message_id``.

        False when the connection waits for that answer already; ``Refusal(RATE_LIMITED)`` when a
        resume of it (on any connection here) or of another answer on ``connection`` is waiting:
        every resume is broadcast to every worker.
        """
        if message_id in connection.resumes or any(
            p.assistant_message_id == message_id for p in connection.pending.values()
        ):
            return False
        wait_s = self._resume_wait_left(connection, message_id)
        if wait_s is not None:
            raise Refusal(
                ErrorCode.RATE_LIMITED,
                "Rate limit exceeded: a resume is already waiting for its answer",
                retry_after_ms=max(1, math.ceil(wait_s * 1000)),
                reason="resume_in_flight",
            )
        pending = PendingRequest(
            request_id="",
            user_message_id="",
            assistant_message_id=message_id,
            chat_id=connection.chat_id or "",
            started=self._clock(),
            phase=Phase.RESUMING,
        )
        connection.resumes[message_id] = pending
        self._resuming[message_id] = (pending, self._clock() + RESUME_WAIT_S)
        self.metrics.in_flight.inc()
        self._watch(connection, pending, RESUME_WAIT_S)
        return True

    def _resume_wait_left(self, connection: Connection, message_id: str) -> float | None:
        now = self._clock()
        waiting = [self._resuming.get(message_id)] + [self._resuming.get(other) for other in connection.resumes]
        left = [entry[1] - now for entry in waiting if entry is not None]
        return max(left) if left else None

    # ------------------------------------------------------------------ forward

    def deliver(self, connection: Connection, reply: Reply) -> bool:
        """Forward one reply frame to ``connection`` if its request is in flight there; False if no
        request of this connection waits for it (the caller tells the worker to stop)."""
        if connection.closed:
            return False
        pending = connection.pending.get(reply.request_id) or self._adopt(connection, reply)
        if pending is None:
            return False
        if not pending.accepts(reply):
            return True
        pending.phase = Phase.FORWARDING
        first_chunk_s = None
        if reply.kind == "chunk" and pending.first_chunk_at is None:
            pending.first_chunk_at = self._clock()
            first_chunk_s = pending.first_chunk_at - pending.started
        error_code = response_ms = None
        final = reply.kind in TERMINAL_KINDS and self._release(connection, pending)
        if final:
            error_code = (reply.code or ErrorCode.UPSTREAM_ERROR.value) if reply.kind == "error" else None
            response_ms = None if error_code else (self._clock() - pending.started) * 1000
        self.metrics.record_reply(
            reply.kind, first_chunk_s=first_chunk_s, final=final, error_code=error_code, response_ms=response_ms
        )
        trace_reply(pending.span, reply.kind, first_chunk=first_chunk_s is not None, final=final, error_code=error_code)
        connection.send(reply.frame)
        return True

    def _adopt(self, connection: Connection, reply: Reply) -> PendingRequest | None:
        """The worker's replay of a resumed answer: the placeholder becomes the request."""
        pending = connection.resumes.pop(reply.message_id, None)
        if pending is None:
            return None
        self._stop_waiting(pending)
        pending.request_id, pending.phase = reply.request_id, Phase.OPEN
        connection.pending[reply.request_id] = pending
        self._watch(connection, pending, self.request_timeout_s)
        return pending

    # ------------------------------------------------------------------ finish

    def finish(self, connection: Connection, pending: PendingRequest, *, error_code: str | None) -> None:
        """The request is over for this connection: its timer stopped, its outcome recorded."""
        if not self._release(connection, pending):
            return
        response_ms = None if error_code else (self._clock() - pending.started) * 1000
        self.metrics.record_finish(error_code=error_code, response_ms=response_ms)
        end_message_span(pending.span, error_code=error_code, outcome="error" if error_code else "complete")

    def abandon(self, connection: Connection) -> bool:
        """The connection went away: end its requests without an outcome; whether it had any."""
        abandoned = [*connection.pending.values(), *connection.resumes.values()]
        for pending in abandoned:
            if self._release(connection, pending):
                self.metrics.in_flight.dec()
                end_message_span(pending.span, error_code=None, outcome="abandoned")
        return bool(abandoned)

    def _release(self, connection: Connection, pending: PendingRequest) -> bool:
        """Take ``pending`` off the books (its timer and resume wait too); False if it was already."""
        if pending.phase is Phase.FINISHED:
            return False
        pending.phase = Phase.FINISHED
        if connection.pending.get(pending.request_id) is pending:
            del connection.pending[pending.request_id]
        if connection.resumes.get(pending.assistant_message_id) is pending:
            del connection.resumes[pending.assistant_message_id]
        self._stop_waiting(pending)
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        return True

    def _stop_waiting(self, pending: PendingRequest) -> None:
        entry = self._resuming.get(pending.assistant_message_id)
        if entry is not None and entry[0] is pending:
            del self._resuming[pending.assistant_message_id]

    # ------------------------------------------------------------------ expire

    def _watch(self, connection: Connection, pending: PendingRequest, delay_s: float) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        pending.timer = asyncio.get_running_loop().call_later(delay_s, self.expire, connection, pending)

    def expire(self, connection: Connection, pending: PendingRequest) -> None:
        """The request's time is up: tell the client ``TIMEOUT`` and the worker to stop."""
        pending.timer = None
        if pending.phase is Phase.FINISHED:
            return
        resuming = pending.phase is Phase.RESUMING
        self.finish(connection, pending, error_code=ErrorCode.TIMEOUT.value)
        if resuming:
            text = "Answer not resumed: it is no longer streaming; it will be in the chat history when finished"
            connection.send(error_frame(ChatError(ErrorCode.TIMEOUT, text, message_id=pending.assistant_message_id)))
            return
        connection.send(error_frame(ChatError(ErrorCode.TIMEOUT, message_id=pending.assistant_message_id)))
        control = ControlMessage(
            kind="cancel", request_id=pending.request_id, connection_id=connection.id, reason="timeout"
        )
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._publish_control(control))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Wait for the ``cancel`` publishes started by timeouts (before the broker closes)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
