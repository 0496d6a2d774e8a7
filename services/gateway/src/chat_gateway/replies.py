"""The reply consumer: each worker frame goes to the connection it names, or the worker is told to stop.

A reply message is a batch (header ``rb``, ``chat_common.reply_batch``): the frames a worker had for
this gateway in one flush, of many answers and connections. It is decoded once and split here; a
malformed batch is dropped whole before any connection is touched. A message without ``rb`` is one
frame with its routing facts in the headers (``ReplyHeaders``: workers of an earlier release, during a
rolling update).

The callback does its bookkeeping before its first ``await``: aio-pika starts one task per
delivery, in delivery order, so queueing the frames synchronously keeps the order of each stream.
Each connection's frames of one batch reach its socket in one write (``Connection.send``).
What is forwarded, and when a request is over, is ``InFlight``'s decision (``chat_gateway.inflight``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from chat_common.envelopes import ControlMessage, ReplyHeaders
from chat_common.reply_batch import BATCH_HEADER, MalformedBatch, Reply, decode_batch
from chat_gateway.inflight import InFlight, PublishControl
from chat_gateway.registry import ConnectionRegistry

logger = logging.getLogger(__name__)

ORPHANS_REMEMBERED = 10_000
"""requests whose worker was told to stop, remembered so that it is told once (oldest forgotten first)."""


def single_reply(headers: dict[str, Any], body: bytes) -> Reply:
    """The one frame of a message without ``rb``; ``ValueError`` (or ``KeyError``) when it is not one."""
    facts = ReplyHeaders.from_amqp(headers)
    return Reply(
        facts.kind,
        facts.connection_id,
        facts.request_id,
        facts.message_id,
        facts.seq,
        facts.attempt,
        facts.code,
        body.decode(),
    )


class ReplyRouter:
    def __init__(self, registry: ConnectionRegistry, inflight: InFlight, publish_control: PublishControl) -> None:
        self.registry = registry
        self.inflight = inflight
        self._publish_control = publish_control
        self._orphans: OrderedDict[str, None] = OrderedDict()

    async def on_reply(self, message: AbstractIncomingMessage) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        try:
            batch = BATCH_HEADER in headers
            replies = decode_batch(message.body) if batch else [single_reply(headers, message.body)]
        except MalformedBatch as exc:
            logger.warning("reply batch dropped: %s", exc)
            return
        except (KeyError, ValueError, TypeError):
            logger.warning("reply without valid routing headers dropped")
            return
        orphans = self.route(replies)
        for reply in orphans:
            await self._orphan(reply)

    def route(self, replies: list[Reply]) -> list[Reply]:
        """Forward each frame; the frames nobody here waits for (their workers are to be told)."""
        registry, deliver = self.registry, self.inflight.deliver
        orphans = []
        for reply in replies:
            connection = registry.get(reply.connection_id)
            if connection is None or not deliver(connection, reply):
                orphans.append(reply)
        return orphans

    async def _orphan(self, reply: Reply) -> None:
        """Nobody waits for this answer here any more: ask the worker (once) to stop generating it.

        The worker waits ``RESUME_GRACE`` before it acts on a disconnect, for the client to resume.
        """
        if reply.kind in ("end", "error") or reply.request_id in self._orphans:
            return
        self._orphans[reply.request_id] = None
        if len(self._orphans) > ORPHANS_REMEMBERED:
            self._orphans.popitem(last=False)
        await self._publish_control(
            ControlMessage(
                kind="cancel",
                request_id=reply.request_id,
                connection_id=reply.connection_id,
                reason="disconnected",
            )
        )
