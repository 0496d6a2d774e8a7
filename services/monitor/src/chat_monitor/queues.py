"""Request-queue depth and consumers, read from the broker itself.

A passive ``queue.declare`` answers with the queue's ready-message count and consumer count, over
AMQP, without the management plugin. It is sent on a channel of its own, through the underlying
aiormq channel (not recorded for replay after a reconnect); a queue that does not exist yet closes
that channel, so the probe opens a fresh one on the next round.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity

from chat_common import topology
from chat_common.frames import CHAT_TYPES

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class QueueDepth:
    name: str
    messages: int
    consumers: int


@dataclass(slots=True)
class QueueState:
    queues: list[QueueDepth] = field(default_factory=list)
    known: bool = False
    """False until the first successful read, and after a failed one."""
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=600))
    """(monotonic time, total depth) of recent reads, for the backlog trend."""

    @property
    def depth(self) -> int:
        return sum(queue.messages for queue in self.queues)

    @property
    def consumers(self) -> int:
        return max((queue.consumers for queue in self.queues), default=0)

    def depth_ago(self, seconds: float, *, now: float | None = None) -> int | None:
        """The depth about ``seconds`` ago (the newest read at least that old), or None without one."""
        now = time.monotonic() if now is None else now
        older = [depth for at, depth in self.history if at <= now - seconds]
        return older[-1] if older else None


class QueueProbe:
    def __init__(self, connection: AbstractRobustConnection, *, names: list[str] | None = None) -> None:
        self.connection = connection
        self.names = names or [topology.request_queue_name(chat_type) for chat_type in CHAT_TYPES]
        self._channel: AbstractChannel | None = None
        self.state = QueueState()

    async def read(self) -> QueueState:
        depths: list[QueueDepth] = []
        try:
            for name in self.names:
                depth = await self._declare_passive(name)
                if depth is not None:
                    depths.append(depth)
        except Exception as exc:  # noqa: BLE001 - the broker is away; the health says so
            if self.state.known:
                logger.warning("request queues not readable: %s", type(exc).__name__)
            self.state.known = False
            return self.state
        self.state.queues = depths
        self.state.known = True
        self.state.history.append((time.monotonic(), self.state.depth))
        return self.state

    async def _declare_passive(self, name: str) -> QueueDepth | None:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.connection.channel(publisher_confirms=False)
        underlay = await self._channel.get_underlay_channel()
        try:
            result = await underlay.queue_declare(name, passive=True)
        except ChannelNotFoundEntity:
            # nobody declared the queue yet; the broker closed the channel: drop it, open another next time
            channel, self._channel = self._channel, None
            with contextlib.suppress(Exception):
                await channel.close()
            return None
        return QueueDepth(name, int(result.message_count or 0), int(result.consumer_count or 0))

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
