"""The answers this worker is generating now, by request id: their cancel scopes in one registry.

Every answer in flight has one ``CancelScope`` here from ``open`` to ``close`` (and the
``chat_worker_in_flight`` gauge counts them). Controls, the loss of the broker connection and a
redelivery of a request still being answered all act on answers through this registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from chat_common.envelopes import ChatRequest, ControlMessage
from llm_worker.answer import CancelScope
from llm_worker.metrics import WorkerMetrics
from llm_worker.replies import ReplyStream

logger = logging.getLogger(__name__)


class ActiveAnswers:
    """Request id → the ``CancelScope`` of its answer (with its ``ReplyStream``); the in-flight gauge."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._scopes: dict[str, CancelScope] = {}

    def __len__(self) -> int:
        return len(self._scopes)

    def __iter__(self) -> Iterator[CancelScope]:
        return iter(list(self._scopes.values()))

    def take_over(self, request: ChatRequest) -> None:
        """A redelivery of a request this process is still answering (the broker lost our channel):
        the running attempt could not ack; it stops and this delivery answers."""
        running = self._scopes.get(request.request_id)
        if running is not None:
            running.cancel("lost")

    def open(self, request: ChatRequest, replies: ReplyStream) -> CancelScope:
        """The current task answers ``request`` from now on."""
        scope = CancelScope(request=request, task=asyncio.current_task(), replies=replies)
        self._scopes[request.request_id] = scope
        self.metrics.in_flight.inc()
        return scope

    def close(self, scope: CancelScope) -> None:
        if self._scopes.get(scope.request.request_id) is scope:
            del self._scopes[scope.request.request_id]
        if scope.pending_disconnect is not None:
            scope.pending_disconnect.cancel()
            scope.pending_disconnect = None
        self.metrics.in_flight.dec()

    def targeted(self, control: ControlMessage) -> list[CancelScope]:
        """The answers a ``cancel`` names: by request, by connection (where the answer goes now), or both."""
        if control.request_id is None and control.connection_id is None:
            return []
        return [scope for scope in self if _targets(control, scope)]

    def answering(self, message_id: str, user_id: str | None) -> CancelScope | None:
        """The scope generating the answer ``message_id`` of ``user_id``, if this worker has it."""
        for scope in self:
            if scope.request.assistant_message_id == message_id and scope.request.user_id == user_id:
                return scope
        return None

    def abandon_all(self) -> None:
        """The broker connection dropped: its deliveries went back to the queue; stop answering them."""
        if self._scopes:
            logger.warning("broker connection lost: abandoning %d answers to redelivery", len(self._scopes))
        for scope in self:
            scope.cancel("lost")


def _targets(control: ControlMessage, scope: CancelScope) -> bool:
    if control.request_id is not None and control.request_id != scope.request.request_id:
        return False
    current = scope.replies.connection_id if scope.replies is not None else scope.request.connection_id
    return control.connection_id is None or control.connection_id == current
