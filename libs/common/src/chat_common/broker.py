"""AMQP connections and the heartbeat publisher shared by gateways and workers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from chat_common.envelopes import Heartbeat

logger = logging.getLogger(__name__)

AMQP_HEARTBEAT_S = 15
PUBLISHED_HEADER = "x-published-ms"
"""epoch ms at which the gateway published a request (the worker measures the queue wait from it)."""


async def connect(url: str, *, name: str) -> AbstractRobustConnection:
    """A robust connection: it reconnects by itself and restores channels, queues and consumers."""
    return await aio_pika.connect_robust(
        url, heartbeat=AMQP_HEARTBEAT_S, client_properties={"connection_name": name}, reconnect_interval=1
    )


def now_ms() -> int:
    return int(time.time() * 1000)


async def publish_heartbeat(exchange: AbstractExchange, beat: Heartbeat, *, timeout_s: float) -> None:
    await exchange.publish(
        aio_pika.Message(
            beat.model_dump_json().encode(),
            content_type="application/json",
            expiration=max(1.0, timeout_s * 3),
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        ),
        routing_key=beat.role,
        # nobody may be listening (no monitor yet): an unroutable heartbeat is dropped, not returned
        mandatory=False,
        timeout=timeout_s,
    )


async def publish_heartbeats(
    exchange: AbstractExchange, snapshot: Callable[[], Heartbeat], *, interval_s: float
) -> None:
    """Publish ``snapshot()`` every ``interval_s`` until cancelled; a failed publish is skipped, not retried."""
    while True:
        try:
            await publish_heartbeat(exchange, snapshot(), timeout_s=interval_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("heartbeat not published", exc_info=logger.isEnabledFor(logging.DEBUG))
        await asyncio.sleep(interval_s)


async def publish_farewell(exchange: AbstractExchange | None, beat: Heartbeat) -> None:
    """The last heartbeat of a process stopping in order (``stopping=True``): best effort, 2 s at most."""
    if exchange is None:
        return
    try:
        await publish_heartbeat(exchange, beat.model_copy(update={"stopping": True}), timeout_s=2.0)
    except Exception:  # noqa: BLE001 - the monitor then notices the silence instead
        logger.info("farewell heartbeat not published")
