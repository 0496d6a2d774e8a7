"""The worker process's wiring: its AMQP channels and consumers, its heartbeat, and its shutdown in order.

Who owns what: ``RequestConsumer`` the answering tasks and their acks (``consumer``, ``outcomes``),
``ActiveAnswers`` the answers in flight (``active``), ``Controls`` cancel and resume (``control``),
``DeadLetters`` the requests the broker gave up on (``dead_letters``). Requests are consumed on one
channel (prefetch ``WORKER_CONCURRENCY``); replies (batched per gateway: ``ReplyBatcher``) and
controls share another, without confirms.

On shutdown (``__main__`` calls the stages in order) the worker stops consuming
(``stop_consuming``), says farewell, lets in-flight answers finish within the grace and returns the
rest to the queue (``drain``: nack with requeue), and last closes the connection (``close``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aio_pika.abc import AbstractExchange, AbstractQueue, AbstractRobustConnection

from chat_common import topology
from chat_common.broker import connect, publish_farewell, publish_heartbeats
from chat_common.envelopes import Heartbeat
from chat_common.heartbeat import build_heartbeat
from chat_common.samples import RequestSampler
from chat_common.settings import WorkerSettings
from llm_worker.active import ActiveAnswers
from llm_worker.answer import Answerer
from llm_worker.consumer import RequestConsumer
from llm_worker.control import Controls, ResumeBook
from llm_worker.dead_letters import DeadLetters
from llm_worker.metrics import WorkerMetrics
from llm_worker.reply_batcher import ReplyBatcher, amqp_publisher

logger = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        answerer: Answerer,
        metrics: WorkerMetrics,
        *,
        sampler: RequestSampler | None = None,
    ) -> None:
        self.settings = settings
        self.sampler = sampler or RequestSampler()
        self.metrics = metrics
        self.started = time.time()
        self.connection: AbstractRobustConnection | None = None
        self._replies: AbstractExchange | None = None
        self._telemetry: AbstractExchange | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self.batcher = ReplyBatcher(amqp_publisher(self._reply_exchange, timeout_s=settings.publish_timeout_s))
        """every frame of every answer, one AMQP message per gateway per flush; ``run`` in ``__main__``."""
        self.active = ActiveAnswers(metrics)
        self.resumes = ResumeBook(keep_s=settings.request_timeout_s)
        self.controls = Controls(self.active, self.resumes, resume_grace_s=settings.resume_grace_s)
        self.requests = RequestConsumer(
            answerer,
            self.active,
            self.resumes,
            metrics,
            replies=self.batcher,
            connected=lambda: self.connected,
        )
        self.dead_letters = DeadLetters(answerer.store, self.batcher, metrics)
        self.stopping = False
        """set by ``stop``: no new requests are taken."""

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed and self.connection.connected.is_set()

    @property
    def in_flight(self) -> int:
        return len(self.active)

    def _reply_exchange(self) -> AbstractExchange:
        assert self._replies is not None, "start() declares the reply exchange before anything consumes"
        return self._replies

    async def start(self) -> None:
        settings = self.settings
        self.connection = await connect(str(settings.amqp_url), name=f"llm-worker {settings.instance_id}")
        consume_channel = await self.connection.channel()
        await consume_channel.set_qos(prefetch_count=settings.worker_concurrency)
        reply_channel = await self.connection.channel(publisher_confirms=False)
        self._replies = await topology.declare_replies(reply_channel)
        for queue in await topology.request_queues(consume_channel, settings):
            self._consumers.append((queue, await queue.consume(self.requests.on_message)))
        control = await topology.declare_control(reply_channel)
        control_queue = await reply_channel.declare_queue(exclusive=True, auto_delete=True)
        await control_queue.bind(control)
        await control_queue.consume(self.controls.on_message, no_ack=True)
        notices = await topology.dead_notice_queue(consume_channel)
        self._consumers.append((notices, await notices.consume(self.dead_letters.on_message)))
        self.connection.close_callbacks.add(self._on_connection_lost)
        logger.info("worker %s consuming with concurrency %d", settings.instance_id, settings.worker_concurrency)

    def _on_connection_lost(self, *_args: Any) -> None:
        self.active.abandon_all()

    async def heartbeats(self) -> None:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=False)
        self._telemetry = await topology.declare_telemetry(channel)
        await publish_heartbeats(self._telemetry, self.heartbeat, interval_s=self.settings.heartbeat_interval_s)

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
            in_flight=self.in_flight,
            concurrency=self.settings.worker_concurrency,
            tokens_total=self.metrics.tokens_by_kind(),
        )

    async def stop_consuming(self) -> None:
        """Take no new requests, notices or deliveries (``stopping`` from now on); idempotent."""
        self.stopping = True
        for queue, tag in self._consumers:
            try:
                await queue.cancel(tag)
            except Exception as exc:  # noqa: BLE001 - the channel is gone: nothing is consumed on it anyway
                logger.debug("consumer %s not cancelled (%r)", tag, exc)
        self._consumers.clear()

    async def drain(self, *, grace_s: float) -> None:
        """Let the answers in flight finish within ``grace_s``; cancel the rest (each goes back to the
        queue: nack with requeue) and wait for them to have settled."""
        tasks = set(self.requests.tasks)
        if not tasks:
            return
        logger.info("waiting up to %.0fs for %d answers in flight", grace_s, len(tasks))
        _, still_running = await asyncio.wait(tasks, timeout=grace_s)
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running, timeout=5)

    async def close(self) -> None:
        """Close the broker connection (after ``drain``: the answers' acks go out on it)."""
        if self.connection is not None:
            await self.connection.close()
