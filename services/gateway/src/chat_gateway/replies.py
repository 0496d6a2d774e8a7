"""The reply consumer: each worker reply goes to the connection it names, or the worker is told to stop.

The callback does its bookkeeping before its first ``await``: aio-pika starts one task per
delivery, in delivery order, so queueing the frame synchronously keeps the order of the stream.
What is forwarded, and when a request is over, is ``InFlight``'s decision (``chat_gateway.inflight``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from aio_pika.abc import AbstractIncomingMessage

from chat_common.envelopes import ControlMessage, ReplyHeaders
from chat_gateway.inflight import InFlight, PublishControl
from chat_gateway.registry import ConnectionRegistry

logger = logging.getLogger(__name__)

ORPHANS_REMEMBERED = 10_000
"""requests whose worker was told to stop, remembered so that it is told once (oldest forgotten first)."""


class ReplyRouter:
    def __init__(self, registry: ConnectionRegistry, inflight: InFlight, publish_control: PublishControl) -> None:
        self.registry = registry
        self.inflight = inflight
        self._publish_control = publish_control
        self._orphans: OrderedDict[str, None] = OrderedDict()

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        try:
            headers = ReplyHeaders.from_amqp(dict(message.headers or {}))
        except (KeyError, ValueError, TypeError):
            logger.warning("reply without valid routing headers dropped")
            return
        connection = self.registry.get(headers.connection_id)
        if connection is None or not self.inflight.deliver(connection, headers, message.body):
            await self._orphan(headers)

    async def _orphan(self, headers: ReplyHeaders) -> None:
        """Nobody waits for this answer here any more: ask the worker (once) to stop generating it.

        The worker waits ``RESUME_GRACE`` before it acts on a disconnect, for the client to resume.
        """
        if headers.kind in ("end", "error") or headers.request_id in self._orphans:
            return
        self._orphans[headers.request_id] = None
        if len(self._orphans) > ORPHANS_REMEMBERED:
            self._orphans.popitem(last=False)
        await self._publish_control(
            ControlMessage(
                kind="cancel",
                request_id=headers.request_id,
                connection_id=headers.connection_id,
                reason="disconnected",
            )
        )
