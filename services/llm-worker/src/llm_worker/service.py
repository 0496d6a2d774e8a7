"""The worker process: consume requests, answer each in its own task, obey cancels, stop in order.

Each request is acked only after its answer is stored and sent (at-least-once; the store is
idempotent on the request id). On shutdown the worker stops consuming, lets in-flight answers finish
within ``grace_s``, then returns the rest to the queue (nack with requeue) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pydantic
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from chat_common import topology
from chat_common.broker import connect, now_ms, publish_heartbeats
from chat_common.envelopes import ChatRequest, ControlMessage, Heartbeat
from chat_common.process import rss_bytes
from chat_common.settings import Settings
from chat_common.store import ChatStore
from chat_common.telemetry import extract_context
from llm_worker.answer import Answerer, CancelScope
from llm_worker.metrics import WorkerMetrics
from llm_worker.replies import ReplyStream

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, answerer: Answerer, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.answerer = answerer
        self.store: ChatStore = answerer.store
        self.metrics = metrics
        self.started = time.time()
        self.connection: AbstractRobustConnection | None = None
        self._replies: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._active: dict[str, CancelScope] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
        logger.info("worker %s consuming with concurrency %d", settings.instance_id, settings.worker_concurrency)

    async def heartbeats(self) -> None:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=False)
        exchange = await topology.declare_telemetry(channel)
        await publish_heartbeats(exchange, self.heartbeat, interval_s=self.settings.heartbeat_interval / 1000)

    def heartbeat(self) -> Heartbeat:
        metrics = self.metrics
        return Heartbeat(
            instance_id=self.settings.instance_id,
            role="worker",
            timestamp_ms=now_ms(),
            started_ms=int(self.started * 1000),
            in_flight=len(self._active),
            concurrency=self.settings.worker_concurrency,
            requests_total=metrics.requests_total,
            errors_total=metrics.errors_total,
            response_time_sum_ms=metrics.answer_sum_ms,
            response_time_count=metrics.answer_count,
            recent_response_ms=metrics.take_recent_answer_ms(),
            rss_bytes=rss_bytes(),
            broker_connected=self.connected,
        )

    # ------------------------------------------------------------------ requests

    async def _on_request(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            request = ChatRequest.model_validate_json(message.body)
        except pydantic.ValidationError:
            logger.error("malformed request %s dead-lettered", message.message_id)
            await message.reject(requeue=False)
            return
        if request.deadline_ms < now_ms():
            logger.info("request %s skipped: its deadline passed while queued", request.request_id)
            await self.store.mark_request(request.request_id, "failed", error_code="TIMEOUT")
            self.metrics.record("expired")
            await message.ack()
            return
        # Only a redelivery can find its answer stored: request ids are new on every publish, so a
        # first delivery skips the query (a quarter of the worker's database round trips).
        redelivered = message.redelivered or _delivery_count(message) > 0
        if redelivered and await self.store.answer_exists(request.request_id):
            logger.info("request %s already answered; redelivery acked", request.request_id)
            self.metrics.record("duplicate")
            await message.ack()
            return
        scope = CancelScope(request=request, task=asyncio.current_task())
        self._active[request.request_id] = scope
        self.metrics.in_flight.inc()
        attempt = _delivery_count(message) + 1
        assert self._replies is not None
        replies = ReplyStream(self._replies, request, attempt=attempt)
        token = None
        try:
            from opentelemetry import context

            token = context.attach(extract_context(message.headers))
            await self.answerer.answer(request, replies, scope)
            await message.ack()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(message.nack(requeue=True))
            raise
        except Exception:
            logger.exception("request %s failed; returned to the queue", request.request_id)
            self.metrics.record("store_error")
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            if token is not None:
                context.detach(token)
            self._active.pop(request.request_id, None)
            self.metrics.in_flight.dec()

    # ------------------------------------------------------------------ control

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        try:
            control = ControlMessage.model_validate_json(message.body)
        except pydantic.ValidationError:
            return
        for scope in list(self._active.values()):
            request = scope.request
            targeted = control.request_id == request.request_id or control.connection_id == request.connection_id
            if targeted and scope.reason is None and scope.task is not None:
                logger.info("request %s: %s", request.request_id, control.reason)
                scope.reason = control.reason
                scope.task.cancel()

    # ------------------------------------------------------------------ shutdown

    async def stop(self, *, grace_s: float) -> None:
        """Stop consuming, let in-flight answers finish within ``grace_s``, requeue the rest."""
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


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """Earlier deliveries of this message, as the quorum queue counts them."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    return value if isinstance(value, int) else 0
