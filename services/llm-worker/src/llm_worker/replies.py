"""Publish one answer's frames to the gateway that holds the client's connection.

All frames of all answers of this worker go through one channel, so their order holds. Bodies are
the client frames, encoded once here; the routing facts ride in the headers.
"""

from __future__ import annotations

from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange

from chat_common.envelopes import ChatRequest, ReplyHeaders, ReplyKind
from chat_common.frames import encode_frame


class ReplyStream:
    def __init__(self, exchange: AbstractExchange, request: ChatRequest, *, attempt: int) -> None:
        self._exchange = exchange
        self._request = request
        self._attempt = attempt
        self._seq = 0

    async def _publish(self, kind: ReplyKind, frame: str) -> None:
        request = self._request
        headers = ReplyHeaders(
            kind=kind,
            connection_id=request.connection_id,
            request_id=request.request_id,
            message_id=request.assistant_message_id,
            seq=self._seq,
            attempt=self._attempt,
        )
        self._seq += 1
        await self._exchange.publish(
            aio_pika.Message(
                frame.encode(), headers=headers.to_amqp(), delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            routing_key=request.reply_to,
            mandatory=False,
        )

    async def start(self) -> None:
        request = self._request
        data: dict[str, Any] = {
            "messageId": request.assistant_message_id,
            "chatId": request.chat_id,
            "userMessageId": request.user_message_id,
        }
        if self._attempt > 1:
            data["attempt"] = self._attempt
        await self._publish("start", encode_frame("response_start", data))

    async def chunk(self, delta: str) -> None:
        data = {"messageId": self._request.assistant_message_id, "delta": delta, "seq": self._seq}
        await self._publish("chunk", encode_frame("response_chunk", data))

    async def end(self, content: str, *, finish_reason: str, usage: dict[str, Any] | None) -> None:
        data = {
            "messageId": self._request.assistant_message_id,
            "content": content,
            "usage": usage,
            "finishReason": finish_reason,
        }
        await self._publish("end", encode_frame("response_end", data))

    async def error(self, code: str, message: str) -> None:
        data = {"code": code, "message": message, "messageId": self._request.assistant_message_id}
        await self._publish("error", encode_frame("error", data))
