"""RabbitMQ names and declarations shared by every service.

Every process declares what it uses with the same arguments (a mismatch is a channel error), so the
order in which services start does not matter.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from chat_common.frames import CHAT_TYPES
from chat_common.settings import BrokerSettings

REQUESTS_EXCHANGE = "chat.requests"
REPLIES_EXCHANGE = "chat.replies"
CONTROL_EXCHANGE = "chat.control"
TELEMETRY_EXCHANGE = "chat.telemetry"
DEAD_LETTER_EXCHANGE = "chat.dead-letter"
DEAD_LETTER_QUEUE = "chat.requests.dead"
DEAD_NOTICE_QUEUE = "chat.requests.dead.notice"
"""a second copy of every dead letter, consumed by workers to tell the client and record the failure
(``chat.requests.dead`` keeps its copy for operators)."""
DEAD_NOTICE_MAX_LENGTH = 10_000

REPLY_QUEUE_EXPIRES_MS = 60_000
"""a gateway's reply queue outlives a broker reconnect, not the gateway."""
REPLY_MESSAGE_TTL_MS = 30_000


def request_queue_name(chat_type: str) -> str:
    return f"chat.requests.{chat_type}"


def reply_queue_name(instance_id: str) -> str:
    return f"chat.replies.{instance_id}"


def request_queue_arguments(settings: BrokerSettings) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.request_delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-max-length": settings.request_queue_max_length,
        "x-overflow": "reject-publish",
    }


async def declare_requests(channel: AbstractChannel, settings: BrokerSettings) -> AbstractExchange:
    """The request exchange, one quorum queue per chat type, and the dead-letter queue."""
    exchange = await channel.declare_exchange(REQUESTS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    dead = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    await dead_queue.bind(dead)
    notices = await channel.declare_queue(DEAD_NOTICE_QUEUE, durable=True, arguments=dead_notice_arguments())
    await notices.bind(dead)
    for chat_type in CHAT_TYPES:
        queue = await channel.declare_queue(
            request_queue_name(chat_type), durable=True, arguments=request_queue_arguments(settings)
        )
        await queue.bind(exchange, routing_key=chat_type)
    return exchange


def dead_notice_arguments() -> dict[str, Any]:
    return {"x-max-length": DEAD_NOTICE_MAX_LENGTH, "x-overflow": "drop-head"}


async def dead_notice_queue(channel: AbstractChannel) -> AbstractQueue:
    return await channel.declare_queue(DEAD_NOTICE_QUEUE, durable=True, arguments=dead_notice_arguments())


async def request_queues(channel: AbstractChannel, settings: BrokerSettings) -> list[AbstractQueue]:
    await declare_requests(channel, settings)
    return [
        await channel.declare_queue(
            request_queue_name(chat_type), durable=True, arguments=request_queue_arguments(settings)
        )
        for chat_type in CHAT_TYPES
    ]


async def declare_replies(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(REPLIES_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)


async def declare_reply_queue(channel: AbstractChannel, instance_id: str) -> AbstractQueue:
    """The gateway process's own reply queue, found again after a broker reconnect."""
    exchange = await declare_replies(channel)
    queue = await channel.declare_queue(
        reply_queue_name(instance_id),
        durable=True,
        arguments={"x-expires": REPLY_QUEUE_EXPIRES_MS, "x-message-ttl": REPLY_MESSAGE_TTL_MS},
    )
    await queue.bind(exchange, routing_key=instance_id)
    return queue


async def declare_control(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)


async def declare_telemetry(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(TELEMETRY_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
