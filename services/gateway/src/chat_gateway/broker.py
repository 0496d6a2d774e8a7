"""The gateway's side of RabbitMQ: publish requests (with confirms), broadcast cancels, own a reply queue.

Every publish is bounded by ``PUBLISH_TIMEOUT``: during a broker outage the client hears ``BUSY``
instead of waiting for the reconnect. Failed publishes are not replayed.

Replies are consumed with a prefetch of ``REPLY_PREFETCH`` and acknowledged in batches as they are
taken (``BatchAcker``): a gateway that falls behind leaves the excess in its queue, where the
message TTL bounds it, instead of in its own memory. Acks are flow control here, not delivery
guarantees: a reply is acked before it is forwarded, and none is ever re-sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection
from opentelemetry import trace
from pamqp.commands import Basic

from chat_common import topology
from chat_common.broker import PUBLISHED_HEADER, connect, now_ms
from chat_common.envelopes import ChatRequest, ControlMessage
from chat_common.errors import ChatError, ErrorCode
from chat_common.settings import GatewaySettings
from chat_common.telemetry import inject_headers
from chat_gateway.tracing import start_publish_span

logger = logging.getLogger(__name__)


class BatchAcker:
    """Acknowledge deliveries in batches: one ``multiple`` ack every ``batch`` deliveries, and one
    ``delay_s`` after the last delivery of a quieter spell, so the prefetch window never stays
    full. Acks that fail (the channel is gone; it is being restored) are dropped: the new channel
    starts with an empty window."""

    def __init__(self, *, batch: int, delay_s: float = 0.02) -> None:
        self._batch = batch
        self._delay_s = delay_s
        self._latest: AbstractIncomingMessage | None = None
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def taken(self, message: AbstractIncomingMessage) -> None:
        self._latest = message
        self._count += 1
        if self._count >= self._batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        latest, self._latest, self._count = self._latest, None, 0
        if latest is not None:
            task = asyncio.get_running_loop().create_task(self._ack(latest))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _ack(message: AbstractIncomingMessage) -> None:
        try:
            await message.ack(multiple=True)
        except Exception:  # noqa: BLE001 - a closed channel's window is gone with it
            logger.debug("reply ack dropped (channel closed)")


class GatewayBroker:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._requests: AbstractExchange | None = None
        self._control: AbstractExchange | None = None
        self.telemetry: AbstractExchange | None = None

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed and self.connection.connected.is_set()

    async def start(self, on_reply: Callable[[AbstractIncomingMessage], Awaitable[None]]) -> None:
        self.connection = await connect(str(self.settings.amqp_url), name=f"gateway {self.settings.instance_id}")
        self._publish_channel = await self.connection.channel(publisher_confirms=True)
        self._requests = await topology.declare_requests(self._publish_channel, self.settings)
        self._control = await topology.declare_control(self._publish_channel)
        self.telemetry = await topology.declare_telemetry(self._publish_channel)
        reply_channel = await self.connection.channel(publisher_confirms=False)
        prefetch = self.settings.reply_prefetch
        await reply_channel.set_qos(prefetch_count=prefetch)
        queue = await topology.declare_reply_queue(reply_channel, self.settings.instance_id)
        acker = BatchAcker(batch=max(1, prefetch // 4))

        async def take(message: AbstractIncomingMessage) -> None:
            acker.taken(message)
            await on_reply(message)

        await queue.consume(take)

    async def publish_request(self, request: ChatRequest) -> None:
        """Publish with a confirm; ``ChatError(BUSY)`` when the broker refuses or does not answer in time."""
        if self._requests is None or not self.connected:
            raise self._busy("broker unavailable")
        span = start_publish_span(topology.REQUESTS_EXCHANGE, request.chat_type, request.request_id)
        with trace.use_span(span, end_on_exit=True):
            message = aio_pika.Message(
                request.model_dump_json().encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=request.request_id,
                expiration=self.settings.request_timeout_s,
                headers={**inject_headers({}), PUBLISHED_HEADER: now_ms()},
            )
            await self._publish_confirmed(message, request.chat_type)

    async def _publish_confirmed(self, message: aio_pika.Message, routing_key: str) -> None:
        assert self._requests is not None
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                confirmation = await self._requests.publish(message, routing_key=routing_key, mandatory=True)
        except TimeoutError as exc:
            raise self._busy("publish timed out") from exc
        except (
            aio_pika.exceptions.AMQPError,
            aio_pika.exceptions.DeliveryError,
            ConnectionError,
            RuntimeError,
        ) as exc:
            raise self._busy(f"publish failed: {type(exc).__name__}") from exc
        if not isinstance(confirmation, Basic.Ack | None):
            raise self._busy("publish not confirmed")

    def _busy(self, why: str) -> ChatError:
        logger.warning("request not published: %s", why)
        return ChatError(ErrorCode.BUSY, retry_after_ms=self.settings.busy_retry_after)

    async def publish_control(self, control: ControlMessage) -> None:
        """Broadcast a cancel to every worker; best effort (a lost cancel only wastes an LLM call)."""
        if self._control is None or not self.connected:
            return
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                await self._control.publish(
                    aio_pika.Message(
                        control.model_dump_json().encode(), delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT
                    ),
                    routing_key="",
                )
        except Exception:  # noqa: BLE001 - best effort by contract
            logger.warning("cancel not published for request %s", control.request_id or control.connection_id)

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
