"""The worker process: consume requests, answer each in its own task, obey controls, stop in order.

Each request is acked only after its answer is stored and sent (at-least-once; the store is
idempotent on the request id). A redelivery (``attempt`` > 1) streams the answer again from the
start, or re-sends the stored answer when the previous attempt stored it but died before the ack.
When the broker connection drops, the answers in flight are abandoned: the broker has already
returned their requests to the queue, and acks on the old channel are impossible.

Controls (``chat.control``): ``cancel`` stops an answer now, except for a closed connection, which
gets ``RESUME_GRACE`` for the client to come back with ``resume``; ``resume`` re-targets the answer.
Every worker hears every ``resume`` and remembers the latest one per answer (``ResumeBook``): when a
worker dies after its client moved to another connection, the redelivered request is answered on
the connection that resumed it, not on the one named in the request.
Dead letters (delivery limit, expiry, malformed) are recorded as failures and the client is told.

On shutdown the worker stops consuming, lets in-flight answers finish within ``grace_s``, then
returns the rest to the queue (nack with requeue) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from typing import Any

import pydantic
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from chat_common import topology
from chat_common.broker import connect, now_ms, publish_farewell, publish_heartbeats
from chat_common.envelopes import ChatRequest, ControlMessage, Heartbeat
from chat_common.errors import DEFAULT_MESSAGES, ErrorCode
from chat_common.heartbeat import build_heartbeat
from chat_common.samples import RequestSampler
from chat_common.settings import Settings
from chat_common.store import DATA_ERRORS, UNAVAILABLE_ERRORS, ChatStore, StoredAnswer
from llm_worker.answer import Answerer, CancelScope, with_store_retry
from llm_worker.metrics import WorkerMetrics
from llm_worker.replies import ReplyStream
from llm_worker.tracing import end_process_span, start_process_span

logger = logging.getLogger(__name__)

REAP_MARGIN_S = 15.0
"""seconds past a request's deadline before a question without an answer counts as lost."""
RESUME_BOOK_SIZE = 10_000
"""resumes remembered at most (oldest forgotten first): a few hundred bytes each."""


class ResumeBook:
    """The latest ``resume`` heard for each answer, for ``keep_s`` (a request's lifetime).

    A redelivered request names the connection of its first attempt; the book tells where the client
    is now. Bounded by ``RESUME_BOOK_SIZE``; expired entries are dropped as new ones come in.
    """

    def __init__(self, *, keep_s: float) -> None:
        self._keep_s = keep_s
        self._entries: OrderedDict[str, tuple[float, ControlMessage]] = OrderedDict()

    def note(self, control: ControlMessage) -> None:
        if control.message_id is None:
            return
        now = time.monotonic()
        self._entries.pop(control.message_id, None)
        self._entries[control.message_id] = (now + self._keep_s, control)
        while self._entries:
            oldest_key, (expires, _) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= RESUME_BOOK_SIZE:
                break
            del self._entries[oldest_key]

    def latest(self, request: ChatRequest) -> ControlMessage | None:
        """The last resume of ``request``'s answer by the same user, if still fresh."""
        entry = self._entries.get(request.assistant_message_id)
        if entry is None or entry[0] < time.monotonic() or entry[1].user_id != request.user_id:
            return None
        return entry[1]


class Worker:
    def __init__(
        self, settings: Settings, answerer: Answerer, metrics: WorkerMetrics, *, sampler: RequestSampler | None = None
    ) -> None:
        self.settings = settings
        self.sampler = sampler or RequestSampler()
        self._telemetry: AbstractExchange | None = None
        self.answerer = answerer
        self.store: ChatStore = answerer.store
        self.metrics = metrics
        self.started = time.time()
        self.connection: AbstractRobustConnection | None = None
        self._replies: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._active: dict[str, CancelScope] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        """set by ``stop``: no new requests are taken."""
        self.resumes = ResumeBook(keep_s=settings.request_timeout / 1000)

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed and self.connection.connected.is_set()

    async def start(self) -> None:
        settings = self.settings
        self.connection = await connect(settings.amqp_url, name=f"llm-worker {settings.instance_id}")
        consume_channel = await self.connection.channel()
        await consume_channel.set_qos(prefetch_count=settings.worker_concurrency)
        reply_channel = await self.connection.channel(publisher_confirms=False)
        self._replies = await topology.declare_replies(reply_channel)
        for queue in await topology.request_queues(consume_channel, settings):
            tag = await queue.consume(self._on_request)
            self._consumers.append((queue, tag))
        control = await topology.declare_control(reply_channel)
        control_queue = await reply_channel.declare_queue(exclusive=True, auto_delete=True)
        await control_queue.bind(control)
        await control_queue.consume(self._on_control, no_ack=True)
        notices = await topology.dead_notice_queue(consume_channel)
        self._consumers.append((notices, await notices.consume(self._on_dead_letter)))
        self.connection.close_callbacks.add(self._on_connection_lost)
        logger.info("worker %s consuming with concurrency %d", settings.instance_id, settings.worker_concurrency)

    async def heartbeats(self) -> None:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=False)
        self._telemetry = await topology.declare_telemetry(channel)
        await publish_heartbeats(self._telemetry, self.heartbeat, interval_s=self.settings.heartbeat_interval / 1000)

    async def farewell(self) -> None:
        """Tell the monitor this worker is leaving in order (so that it does not alert about the silence)."""
        await publish_farewell(self._telemetry, self.heartbeat())

    def heartbeat(self) -> Heartbeat:
        return build_heartbeat(
            "worker",
            instance_id=self.settings.instance_id,
            started=self.started,
            figures=self.metrics,
            sampler=self.sampler,
            broker_connected=self.connected,
            in_flight=len(self._active),
            concurrency=self.settings.worker_concurrency,
            tokens_total=self.metrics.tokens_by_kind(),
        )

    # ------------------------------------------------------------------ requests

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        # the request's task runs inside its span: every span and log line of it joins the message's trace
        span, task_context = start_process_span(message)
        task = asyncio.get_running_loop().create_task(self._handle(message), context=task_context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(functools.partial(end_process_span, span))

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            request = ChatRequest.model_validate_json(message.body)
        except pydantic.ValidationError:
            logger.error("malformed request %s dead-lettered", message.message_id)
            await message.reject(requeue=False)
            return
        if request.request_id in self._active:
            # the broker re-sent a request this process is still answering (it lost our channel):
            # the running attempt will not be able to ack; this delivery takes over
            self._active[request.request_id].cancel("lost")
        assert self._replies is not None
        replies = ReplyStream(
            self._replies,
            request,
            attempt=_attempt(message),
            publish_timeout_s=self.settings.publish_timeout / 1000,
        )
        moved = self.resumes.latest(request)
        if moved is not None and moved.connection_id is not None and moved.reply_to is not None:
            # the client resumed this answer elsewhere before the previous attempt's worker died
            logger.info(
                "request %s: answering on connection %s, which resumed it", request.request_id, moved.connection_id
            )
            replies.redirect(moved.connection_id, moved.reply_to)
        try:
            if await self._settled_before(request, replies, redelivered=message.redelivered or _attempt(message) > 1):
                await message.ack()
                return
        except UNAVAILABLE_ERRORS:
            logger.warning("request %s returned to the queue: database unavailable", request.request_id)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        scope = CancelScope(request=request, task=asyncio.current_task(), replies=replies)
        self._active[request.request_id] = scope
        self.metrics.in_flight.inc()
        try:
            await self.answerer.answer(request, replies, scope)
            await message.ack()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(message.nack(requeue=True))
            raise
        except DATA_ERRORS as exc:
            # the same data would fail the same way on every delivery: a final failure, not a redelivery
            logger.error("request %s failed on data the store or encoder refused: %r", request.request_id, exc)
            self.metrics.record("data_error")
            await self._fail_final(request, replies)
            with contextlib.suppress(Exception):
                await message.ack()
        except Exception as exc:
            if not self.connected:  # the broker went away mid-answer: it has the request back already
                logger.warning("request %s abandoned: broker connection lost (%r)", request.request_id, exc)
                return
            logger.exception("request %s failed; returned to the queue", request.request_id)
            self.metrics.record("store_error")
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            if self._active.get(request.request_id) is scope:
                del self._active[request.request_id]
            if scope.pending_disconnect is not None:
                scope.pending_disconnect.cancel()
            self.metrics.in_flight.dec()

    async def _fail_final(self, request: ChatRequest, replies: ReplyStream) -> None:
        """Record the request as failed (``INTERNAL``) and tell the client; best effort, never raises."""
        with contextlib.suppress(Exception):
            await with_store_retry(
                request,
                lambda: self.store.mark_request(request.request_id, "failed", error_code="INTERNAL", only_open=True),
            )
        with contextlib.suppress(Exception):
            await replies.error(ErrorCode.INTERNAL.value, "The request could not be completed")

    async def _settled_before(self, request: ChatRequest, replies: ReplyStream, *, redelivered: bool) -> bool:
        """``True`` when there is nothing to generate: the deadline passed while the request was
        queued, or an earlier attempt stored the answer (then it is sent again, whole)."""
        if request.deadline_ms < now_ms():
            logger.info("request %s skipped: its deadline passed while queued", request.request_id)
            await with_store_retry(
                request,
                lambda: self.store.mark_request(request.request_id, "failed", error_code="TIMEOUT", only_open=True),
            )
            self.metrics.record("expired")
            return True
        if not redelivered:
            # request ids are new on every publish: only a redelivery can find its answer stored,
            # so a first delivery skips the query (a quarter of the worker's database round trips)
            return False
        stored = await with_store_retry(request, lambda: self.store.get_answer(request.request_id))
        if stored is None:
            return False
        logger.info("request %s already answered; re-sending the stored answer", request.request_id)
        self.metrics.record("duplicate")
        await _resend(replies, stored)
        return True

    # ------------------------------------------------------------------ control

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        try:
            control = ControlMessage.model_validate_json(message.body)
        except pydantic.ValidationError:
            return
        if control.kind == "resume":
            await self._resume(control)
            return
        if control.request_id is None and control.connection_id is None:
            return
        for scope in list(self._active.values()):
            if not _targets(control, scope):
                continue
            if control.reason == "disconnected" and self.settings.resume_grace > 0:
                if scope.pending_disconnect is None and scope.reason is None:
                    logger.info("request %s: connection closed; waiting for a resume", scope.request.request_id)
                    scope.pending_disconnect = asyncio.get_running_loop().call_later(
                        self.settings.resume_grace / 1000, scope.cancel, "disconnected"
                    )
            elif scope.cancel(control.reason):
                logger.info("request %s: %s", scope.request.request_id, control.reason)

    async def _resume(self, control: ControlMessage) -> None:
        if control.message_id is None or control.connection_id is None or control.reply_to is None:
            return
        self.resumes.note(control)
        for scope in list(self._active.values()):
            request = scope.request
            if request.assistant_message_id != control.message_id or request.user_id != control.user_id:
                continue
            if scope.reason is not None or scope.replies is None:
                return
            if scope.pending_disconnect is not None:
                scope.pending_disconnect.cancel()
                scope.pending_disconnect = None
            logger.info("request %s resumed on connection %s", request.request_id, control.connection_id)
            with contextlib.suppress(Exception):
                await scope.replies.retarget(
                    control.connection_id, control.reply_to, last_seq=control.last_seq, seen_attempt=control.attempt
                )
            return

    def _on_connection_lost(self, *_args: Any) -> None:
        """The broker connection dropped: its deliveries went back to the queue; stop answering them."""
        if self._active:
            logger.warning("broker connection lost: abandoning %d answers to redelivery", len(self._active))
        for scope in list(self._active.values()):
            scope.cancel("lost")

    # ------------------------------------------------------------------ dead letters

    async def _on_dead_letter(self, message: AbstractIncomingMessage) -> None:
        """A request the broker gave up on: record the failure and tell the client, unless answered."""
        try:
            request = ChatRequest.model_validate_json(message.body)
        except pydantic.ValidationError:
            await message.ack()
            return
        reason = _death_reason(message)
        code = ErrorCode.TIMEOUT if reason == "expired" else ErrorCode.INTERNAL
        try:
            stored = await with_store_retry(request, lambda: self.store.get_answer(request.request_id))
            if stored is None:
                logger.warning("request %s dead-lettered (%s): client told %s", request.request_id, reason, code)
                await with_store_retry(
                    request,
                    lambda: self.store.mark_request(request.request_id, "failed", error_code=code, only_open=True),
                )
                assert self._replies is not None
                replies = ReplyStream(self._replies, request, attempt=_attempt(message))
                message_text = "The request could not be completed" if code == ErrorCode.INTERNAL else None
                await replies.error(code.value, message_text or DEFAULT_MESSAGES[code])
                self.metrics.record("dead_letter")
            await message.ack()
        except UNAVAILABLE_ERRORS:
            await asyncio.sleep(1)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

    # ------------------------------------------------------------------ lost requests

    async def reap_forever(self) -> None:
        """Now and then, record as ``TIMEOUT`` the questions whose request never reached a worker
        (the gateway died between storing and publishing) once their deadline is well past."""
        timeout_s = self.settings.request_timeout / 1000
        interval = min(max(timeout_s / 2, 5.0), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                reaped = await self.store.fail_stale_requests(older_than_s=timeout_s + REAP_MARGIN_S)
            except UNAVAILABLE_ERRORS:
                continue
            if reaped:
                logger.warning("%d questions without a request past their deadline recorded as TIMEOUT", reaped)

    # ------------------------------------------------------------------ shutdown

    async def stop(self, *, grace_s: float) -> None:
        """Stop consuming, let in-flight answers finish within ``grace_s``, requeue the rest."""
        self.stopping = True
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consumers.clear()
        if self._tasks:
            logger.info("waiting up to %.0fs for %d answers in flight", grace_s, len(self._tasks))
            _, still_running = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in still_running:
                task.cancel()
            if still_running:
                await asyncio.wait(still_running, timeout=5)
        if self.connection is not None:
            await self.connection.close()


def _attempt(message: AbstractIncomingMessage) -> int:
    """Which delivery of the request this is (1 = first), as the quorum queue counts them."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    count = value if isinstance(value, int) else 0
    if count == 0 and message.redelivered:
        count = 1
    return count + 1


def _targets(control: ControlMessage, scope: CancelScope) -> bool:
    """A cancel names a request, a connection, or both; the connection is where the answer goes now."""
    if control.request_id is not None and control.request_id != scope.request.request_id:
        return False
    current = scope.replies.connection_id if scope.replies is not None else scope.request.connection_id
    return control.connection_id is None or control.connection_id == current


def _death_reason(message: AbstractIncomingMessage) -> str:
    deaths = (message.headers or {}).get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason", "")
        return reason.decode() if isinstance(reason, bytes) else str(reason)
    return "unknown"


async def _resend(replies: ReplyStream, stored: StoredAnswer) -> None:
    """Send a stored answer again as one start, one chunk and its end (or its error)."""
    await replies.start()
    if stored.status == "failed" and stored.error_code and stored.error_code != "TIMEOUT":
        await replies.error(stored.error_code, "The language model failed to answer")
        return
    if stored.content:
        await replies.chunk(stored.content)
    usage = None
    if stored.prompt_tokens is not None or stored.completion_tokens is not None:
        usage = {
            "promptTokens": stored.prompt_tokens,
            "completionTokens": stored.completion_tokens,
            "totalTokens": (stored.prompt_tokens or 0) + (stored.completion_tokens or 0),
        }
    await replies.end(stored.content, finish_reason=stored.finish_reason or "stop", usage=usage)
