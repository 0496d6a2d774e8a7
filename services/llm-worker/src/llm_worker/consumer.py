"""The request consumer: each delivery answered in its own task, its end decided once (``outcomes.settle``).

Each request is acked only after its answer is stored and sent (at-least-once; the store is
idempotent on the request id). A redelivery (``attempt`` > 1) streams the answer again from the
start, or re-sends the stored answer when the previous attempt stored it but died before the ack.
When the broker connection drops, the answers in flight are abandoned: the broker has already
returned their requests to the queue, and acks on the old channel are impossible.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import pydantic
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.trace import Span

from chat_common.broker import now_ms
from chat_common.envelopes import ChatRequest
from chat_common.errors import ErrorCode
from chat_common.store import DATA_ERRORS, UNAVAILABLE_ERRORS, ChatStore
from llm_worker.active import ActiveAnswers
from llm_worker.answer import Answerer, with_store_retry
from llm_worker.control import ResumeBook
from llm_worker.metrics import WorkerMetrics
from llm_worker.outcomes import Abandon, Ack, Nack, Reject, Settled, settle
from llm_worker.replies import ReplyStream
from llm_worker.reply_batcher import ReplyBatcher
from llm_worker.tracing import start_process_span

logger = logging.getLogger(__name__)


def attempt_of(message: AbstractIncomingMessage) -> int:
    """Which delivery of the request this is (1 = first), as the quorum queue counts them."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    count = value if isinstance(value, int) else 0
    if count == 0 and message.redelivered:
        count = 1
    return count + 1


@dataclass(slots=True)
class RequestConsumer:
    """Owns the answering tasks (``tasks``, a supervised set the shutdown waits for)."""

    answerer: Answerer
    active: ActiveAnswers
    resumes: ResumeBook
    metrics: WorkerMetrics
    replies: ReplyBatcher
    connected: Callable[[], bool]
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def store(self) -> ChatStore:
        return self.answerer.store

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        # the request's task runs inside its span: every span and log line of it joins the message's trace
        span, task_context = start_process_span(message)
        task = asyncio.get_running_loop().create_task(self._run(message, span), context=task_context)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, message: AbstractIncomingMessage, span: Span) -> None:
        try:
            await self._handle(message)
        except Settled as decision:
            await settle(message, decision, metrics=self.metrics, span=span)
        except asyncio.CancelledError:
            # shutdown, or the answer taken over: the request goes back to the queue even while cancelled
            await asyncio.shield(settle(message, Nack(), metrics=self.metrics, span=span))
            raise

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        """Raises the delivery's outcome (``outcomes``); returns only by raising."""
        try:
            request = ChatRequest.model_validate_json(message.body)
        except pydantic.ValidationError:
            logger.error("malformed request %s dead-lettered", message.message_id)
            raise Reject() from None
        self.active.take_over(request)
        replies = self._reply_stream(request, message)
        try:
            settled = await self._settled_before(request, replies, redelivered=attempt_of(message) > 1)
        except UNAVAILABLE_ERRORS:
            logger.warning("request %s returned to the queue: database unavailable", request.request_id)
            raise Nack() from None
        if settled is not None:
            raise Ack(settled)
        scope = self.active.open(request, replies)
        try:
            outcome, answer_ms = await self.answerer.answer(request, replies, scope)
        except DATA_ERRORS as exc:
            # the same data would fail the same way on every delivery: a final failure, not a redelivery
            logger.error("request %s failed on data the store or encoder refused: %r", request.request_id, exc)
            await self.answerer.fail_final(request, replies)
            raise Ack("data_error") from exc
        except Exception as exc:
            if not self.connected():  # the broker went away mid-answer: it has the request back already
                logger.warning("request %s abandoned: broker connection lost (%r)", request.request_id, exc)
                raise Abandon() from exc
            logger.exception("request %s failed; returned to the queue", request.request_id)
            raise Nack("store_error") from exc
        finally:
            self.active.close(scope)
        raise Ack(outcome, answer_ms=answer_ms)

    def _reply_stream(self, request: ChatRequest, message: AbstractIncomingMessage) -> ReplyStream:
        replies = ReplyStream(self.replies, request, attempt=attempt_of(message))
        moved = self.resumes.latest(request)
        if moved is not None and moved.connection_id is not None and moved.reply_to is not None:
            # the client resumed this answer elsewhere before the previous attempt's worker died
            logger.info(
                "request %s: answering on connection %s, which resumed it", request.request_id, moved.connection_id
            )
            replies.redirect(moved.connection_id, moved.reply_to)
        return replies

    async def _settled_before(self, request: ChatRequest, replies: ReplyStream, *, redelivered: bool) -> str | None:
        """The outcome when there is nothing to generate: the deadline passed while the request was
        queued (``expired``), or an earlier attempt stored the answer (``duplicate``: sent again, whole)."""
        if request.deadline_ms < now_ms():
            logger.info("request %s skipped: its deadline passed while queued", request.request_id)
            await with_store_retry(
                request,
                lambda: self.store.mark_request(
                    request.request_id, "failed", error_code=ErrorCode.TIMEOUT.value, only_open=True
                ),
            )
            return "expired"
        if not redelivered:
            # request ids are new on every publish: only a redelivery can find its answer stored,
            # so a first delivery skips the query (a quarter of the worker's database round trips)
            return None
        stored = await with_store_retry(request, lambda: self.store.get_answer(request.request_id))
        if stored is None:
            return None
        logger.info("request %s already answered; re-sending the stored answer", request.request_id)
        await replies.resend(stored)
        return "duplicate"
