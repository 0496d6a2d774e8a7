"""The worker's reply transport: every frame of every answer, one AMQP message per gateway per flush.

Answers add frames without waiting (``add``); one flusher task takes whatever was added since its last
round and publishes, for each destination gateway, one batch message (``chat_common.reply_batch``).
While a round is being published the next one fills: at low load a frame leaves on the next loop turn
(no added delay), under load each message carries more frames (the cost per frame falls as load rises).

Order: entries of one answer are added in order, rounds are published one after the other on one
channel, and each destination's entries keep their order inside a round; so one answer's frames
reach its gateway in order, as single replies did.

Waiting: ``add`` returns the round's future for that destination, done when its batch is published
(or failed). An answer awaits it for its last frame (it is acknowledged only once its end is sent)
and whenever the frames waiting exceed ``max_pending_bytes`` (a slow broker slows the answers down
instead of growing this process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractExchange

from chat_common.reply_batch import BATCH_HEADER, BATCH_VERSION, Reply, encode_batch

logger = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
"""publish one batch body to one gateway's reply queue (routing key); raises when it could not."""

CHANNEL_GONE: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelClosed,
    ConnectionError,
)
RETRY_S = 0.2


def amqp_publisher(exchange: Callable[[], AbstractExchange], *, timeout_s: float) -> Publish:
    """Publish batches on the reply exchange (not persistent, no confirm: a reply lost with the broker
    is an answer the gateway times out, and the request is redelivered). While the channel is being
    restored after a reconnect the publish is retried, for at most ``timeout_s``."""

    async def publish(reply_to: str, body: bytes) -> None:
        message = aio_pika.Message(
            body, headers={BATCH_HEADER: BATCH_VERSION}, delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        give_up = time.monotonic() + timeout_s
        while True:
            try:
                await exchange().publish(message, routing_key=reply_to, mandatory=False, timeout=timeout_s)
                return
            except CHANNEL_GONE:
                if time.monotonic() + RETRY_S > give_up:
                    raise
                await asyncio.sleep(RETRY_S)

    return publish


class _Round:
    __slots__ = ("done", "entries", "size")

    def __init__(self) -> None:
        self.entries: list[Reply] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.size = 0


class ReplyBatcher:
    def __init__(
        self, publish: Publish, *, max_batch_bytes: int = 256 * 1024, max_pending_bytes: int = 8 << 20
    ) -> None:
        self._publish = publish
        self._max_batch_bytes = max_batch_bytes
        self._max_pending_bytes = max_pending_bytes
        self._next: dict[str, _Round] = {}
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self.batches = 0
        self.frames = 0

    @property
    def backlogged(self) -> bool:
        return self._pending_bytes > self._max_pending_bytes

    def add(self, reply_to: str, reply: Reply) -> asyncio.Future[None]:
        """Queue one frame for ``reply_to``; the future is done when the batch carrying it is published."""
        batch = self._next.get(reply_to)
        if batch is None:
            batch = self._next[reply_to] = _Round()
        batch.entries.append(reply)
        size = len(reply.frame) + 160
        batch.size += size
        self._pending_bytes += size
        self._wake.set()
        return batch.done

    async def run(self) -> None:
        """Publish rounds until cancelled (owned by the worker's task group)."""
        rounds: dict[str, _Round] = {}
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                rounds, self._next = self._next, {}
                for reply_to, batch in rounds.items():
                    await self._send(reply_to, batch)
        finally:
            # stopped (after the answers drained): whoever still waits for a frame hears it, never hangs
            stopped = ConnectionError("reply batcher stopped")
            for batch in [*rounds.values(), *self._next.values()]:
                if not batch.done.done():
                    batch.done.set_exception(stopped)
                    batch.done.exception()

    async def _send(self, reply_to: str, batch: _Round) -> None:
        try:
            for part in self._split(batch.entries):
                await self._publish(reply_to, encode_batch(part))
                self.batches += 1
                self.frames += len(part)
        except Exception as exc:  # noqa: BLE001 - every answer in the batch hears it through its future
            logger.warning("reply batch to %s not published (%d frames): %r", reply_to, len(batch.entries), exc)
            if not batch.done.done():
                batch.done.set_exception(exc)
            # nobody may await a failed round (its answers ended meanwhile): do not log it again
            batch.done.exception()
        else:
            if not batch.done.done():
                batch.done.set_result(None)
        finally:
            self._pending_bytes -= batch.size

    def _split(self, entries: list[Reply]) -> list[list[Reply]]:
        parts: list[list[Reply]] = [[]]
        size = 0
        for reply in entries:
            cost = len(reply.frame) + 160
            if parts[-1] and size + cost > self._max_batch_bytes:
                parts.append([])
                size = 0
            parts[-1].append(reply)
            size += cost
        return parts
