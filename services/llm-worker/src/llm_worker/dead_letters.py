"""Requests the broker gave up on (delivery limit, expiry, malformed): recorded as failed, the client told.

A dead letter whose answer was stored meanwhile (the last attempt stored it and died before its
ack) is dropped silently: the client has it in its history. The notice is acked once the failure
is stored and the client told; while PostgreSQL is away it goes back to the notice queue.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import pydantic
from aio_pika.abc import AbstractIncomingMessage

from chat_common.envelopes import ChatRequest
from chat_common.errors import DEFAULT_MESSAGES, ErrorCode
from chat_common.store import UNAVAILABLE_ERRORS, ChatStore
from llm_worker.answer import with_store_retry
from llm_worker.consumer import attempt_of
from llm_worker.metrics import WorkerMetrics
from llm_worker.outcomes import Ack, Nack, Settled, settle
from llm_worker.replies import ReplyStream
from llm_worker.reply_batcher import ReplyBatcher

logger = logging.getLogger(__name__)

UNAVAILABLE_BACKOFF_S = 1.0
"""pause before a notice goes back to its queue while PostgreSQL is away (after ``with_store_retry``
gave up): a deliberate back-off, not synchronisation. The broker redelivers a requeued notice at
once, and without a pause the notices of an outage would spin through this consumer."""


@dataclass(slots=True)
class DeadLetters:
    """Consumes the dead-letter notices; each one settled once (``outcomes.settle``)."""

    store: ChatStore
    replies: ReplyBatcher
    metrics: WorkerMetrics

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            await self._handle(message)
        except Settled as decision:
            await settle(message, decision, metrics=self.metrics, label="dead letter")

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        """Raises the notice's outcome (``Ack``, or ``Nack`` while PostgreSQL is away); returns only by raising."""
        try:
            request = ChatRequest.model_validate_json(message.body)
        except pydantic.ValidationError:
            raise Ack() from None  # nothing to tell anyone: nobody can be named
        try:
            told = await self._fail(request, message)
        except UNAVAILABLE_ERRORS:
            await asyncio.sleep(UNAVAILABLE_BACKOFF_S)
            raise Nack() from None
        raise Ack("dead_letter" if told else None)

    async def _fail(self, request: ChatRequest, message: AbstractIncomingMessage) -> bool:
        """Record the request as failed and tell the client; False when its answer was stored meanwhile."""
        reason = _death_reason(message)
        code = ErrorCode.TIMEOUT if reason == "expired" else ErrorCode.INTERNAL
        stored = await with_store_retry(request, lambda: self.store.get_answer(request.request_id))
        if stored is not None:
            return False
        logger.warning("request %s dead-lettered (%s): client told %s", request.request_id, reason, code)
        await with_store_retry(
            request,
            lambda: self.store.mark_request(request.request_id, "failed", error_code=code, only_open=True),
        )
        replies = ReplyStream(self.replies, request, attempt=attempt_of(message))
        text = "The request could not be completed" if code == ErrorCode.INTERNAL else DEFAULT_MESSAGES[code]
        await replies.error(code.value, text)
        return True


def _death_reason(message: AbstractIncomingMessage) -> str:
    deaths = (message.headers or {}).get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason", "")
        return reason.decode() if isinstance(reason, bytes) else str(reason)
    return "unknown"
