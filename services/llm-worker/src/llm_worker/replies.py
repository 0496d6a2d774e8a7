"""Publish one answer's frames to the gateway that holds the client's connection.

All frames of all answers of this worker go through one channel, so their order holds. Bodies are
the client frames, encoded once here; the routing facts ride in the headers.

The stream keeps the chunks it sent (the coalesced ones, a few per second) so that a client that
reconnects can be sent the rest: ``retarget`` switches the destination and replays the chunks after
the sequence number the client saw, under the same lock as live publishes, so nothing interleaves.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange

from chat_common.envelopes import ChatRequest, ReplyHeaders, ReplyKind
from chat_common.server_frames import error_data_frame, response_chunk_frame, response_end_frame, response_start_frame
from chat_common.store import StoredAnswer

CHANNEL_GONE: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.AMQPConnectionError,
    aio_pika.exceptions.ChannelClosed,
    ConnectionError,
)
RETRY_S = 0.2


def usage_of(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, Any] | None:
    """The ``usage`` of a ``response_end``: None when the model reported no token counts."""
    if prompt_tokens is None and completion_tokens is None:
        return None
    return {
        "promptTokens": prompt_tokens,
        "completionTokens": completion_tokens,
        "totalTokens": (prompt_tokens or 0) + (completion_tokens or 0),
    }


class ReplyStream:
    def __init__(
        self, exchange: AbstractExchange, request: ChatRequest, *, attempt: int, publish_timeout_s: float = 5.0
    ) -> None:
        self._exchange = exchange
        self._request = request
        self._attempt = attempt
        self._timeout = publish_timeout_s
        self._seq = 0
        self._lock = asyncio.Lock()
        self._sent: list[tuple[int, str]] = []
        """(seq, delta) of every chunk sent, for replays after a resume."""
        self.connection_id = request.connection_id
        self.reply_to = request.reply_to

    async def _send(self, kind: ReplyKind, frame: str, seq: int, code: str | None = None) -> None:
        request = self._request
        headers = ReplyHeaders(
            kind=kind,
            connection_id=self.connection_id,
            request_id=request.request_id,
            message_id=request.assistant_message_id,
            seq=seq,
            attempt=self._attempt,
            code=code,
        )
        message = aio_pika.Message(
            frame.encode(), headers=headers.to_amqp(), delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        give_up = time.monotonic() + self._timeout
        while True:
            try:
                await self._exchange.publish(message, routing_key=self.reply_to, mandatory=False, timeout=self._timeout)
                return
            except CHANNEL_GONE:
                # the channel is being restored after a reconnect (or the connection just dropped, and
                # this answer is about to be abandoned): a failed reply must not cost a delivery
                if time.monotonic() + RETRY_S > give_up:
                    raise
                await asyncio.sleep(RETRY_S)

    async def _publish(self, kind: ReplyKind, build: Any, code: str | None = None) -> None:
        """Publish the frame ``build(seq)`` with the next sequence number."""
        async with self._lock:
            seq = self._seq
            self._seq += 1
            await self._send(kind, build(seq), seq, code)

    def _start_frame(self, *, resumed: bool = False) -> str:
        request = self._request
        data: dict[str, Any] = {
            "messageId": request.assistant_message_id,
            "chatId": request.chat_id,
            "userMessageId": request.user_message_id,
        }
        if self._attempt > 1:
            data["attempt"] = self._attempt
        if resumed:
            data["resumed"] = True
        return response_start_frame(data)

    def _chunk_frame(self, delta: str, seq: int) -> str:
        return response_chunk_frame({"messageId": self._request.assistant_message_id, "delta": delta, "seq": seq})

    async def start(self) -> None:
        await self._publish("start", lambda _seq: self._start_frame())

    async def chunk(self, delta: str) -> None:
        async with self._lock:
            seq = self._seq
            self._seq += 1
            self._sent.append((seq, delta))
            await self._send("chunk", self._chunk_frame(delta, seq), seq)

    async def end(self, content: str, *, finish_reason: str, usage: dict[str, Any] | None) -> None:
        data = {
            "messageId": self._request.assistant_message_id,
            "content": content,
            "usage": usage,
            "finishReason": finish_reason,
        }
        await self._publish("end", lambda _seq: response_end_frame(data))

    async def error(self, code: str, message: str) -> None:
        data = {"code": code, "message": message, "messageId": self._request.assistant_message_id}
        await self._publish("error", lambda _seq: error_data_frame(data), code=code)

    def redirect(self, connection_id: str, reply_to: str) -> None:
        """Address every frame from now on to another connection (before the first one is sent)."""
        self.connection_id, self.reply_to = connection_id, reply_to

    async def retarget(self, connection_id: str, reply_to: str, *, last_seq: int, seen_attempt: int = 1) -> None:
        """Send the answer to another connection from now on: a ``response_start`` marked ``resumed``,
        then the chunks after ``last_seq``, then whatever comes next.

        ``last_seq`` counts in the attempt the client saw (``seen_attempt``). If that is not this
        attempt (the request was redelivered meanwhile), the client gets this attempt from the
        start: an unmarked ``response_start`` with ``attempt``, which tells it to start over, and
        every chunk."""
        async with self._lock:
            self.connection_id, self.reply_to = connection_id, reply_to
            same = seen_attempt == self._attempt
            await self._send("start", self._start_frame(resumed=same), 0)
            for seq, delta in self._sent:
                if seq > (last_seq if same else -1):
                    await self._send("chunk", self._chunk_frame(delta, seq), seq)

    async def resend(self, stored: StoredAnswer) -> None:
        """Send a stored answer again as one start, one chunk and its end (or its error)."""
        await self.start()
        if stored.status == "failed" and stored.error_code and stored.error_code != "TIMEOUT":
            await self.error(stored.error_code, "The language model failed to answer")
            return
        if stored.content:
            await self.chunk(stored.content)
        usage = usage_of(stored.prompt_tokens, stored.completion_tokens)
        await self.end(stored.content, finish_reason=stored.finish_reason or "stop", usage=usage)
