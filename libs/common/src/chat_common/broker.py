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


async def connect(url: str, *, name: str) -> AbstractRobustConnection:
    """A robust connection: it reconnects by itself and restores channels, queues and consumers."""
    return await aio_pika.connect_robust(
        url, heartbeat=AMQP_HEARTBEAT_S, client_properties={"connection_name": name}, reconnect_interval=1
    )


def now_ms() -> int:
    return int(time.time() * 1000)


async def publish_heartbeats(
    exchange: AbstractExchange, snapshot: Callable[[], Heartbeat], *, interval_s: float
) -> None:
    """Publish ``snapshot()`` every ``interval_s`` until cancelled; a failed publish is skipped, not retried."""
    while True:
        try:
            beat = snapshot()
            await exchange.publish(
                aio_pika.Message(
                    beat.model_dump_json().encode(),
                    content_type="application/json",
                    expiration=max(1.0, interval_s * 3),
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=beat.role,
                timeout=interval_s,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("heartbeat not published", exc_info=logger.isEnabledFor(logging.DEBUG))
        await asyncio.sleep(interval_s)
