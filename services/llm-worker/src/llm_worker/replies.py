"""One answer's frames, addressed to the gateway that holds the client's connection.

Frames go into the worker's ``ReplyBatcher``, which sends every frame it has for one gateway in one
AMQP message per flush (``chat_common.reply_batch``); the bodies are the client frames, encoded once
here, with each frame's routing facts beside it. Adding a frame does not wait: an answer waits for
the broker only for its last frame (``end`` or ``error``: it is acknowledged once that is sent, and
every earlier frame of it with it) and while the batcher holds more than its budget.

A frame whose batch could not be published (the broker away for longer than ``PUBLISH_TIMEOUT``)
fails the answer at its next frame or at its end: the request goes back to the queue, as when a
single publish failed.

The stream keeps the chunks it sent (the coalesced ones, a few per second) so that a client that
reconnects can be sent the rest: ``retarget`` switches the destination and replays the chunks after
the sequence number the client saw. Adding is synchronous, so a replay and live frames never
interleave.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chat_common.envelopes import ChatRequest, ReplyKind
from chat_common.reply_batch import Reply
from chat_common.server_frames import error_data_frame, response_chunk_frame, response_end_frame, response_start_frame
from chat_common.store import StoredAnswer
from llm_worker.reply_batcher import ReplyBatcher


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
    def __init__(self, batcher: ReplyBatcher, request: ChatRequest, *, attempt: int) -> None:
        self._batcher = batcher
        self._request = request
        self._attempt = attempt
        self._seq = 0
        self._sent: list[tuple[int, str]] = []
        """(seq, delta) of every chunk sent, for replays after a resume."""
        self._unconfirmed: list[asyncio.Future[None]] = []
        """the batches carrying this answer's frames that were not published yet."""
        self.connection_id = request.connection_id
        self.reply_to = request.reply_to

    def _add(self, kind: ReplyKind, frame: str, seq: int, code: str | None = None) -> asyncio.Future[None]:
        """Queue one frame; raises the failure of an earlier batch of this answer, if one failed."""
        self._check()
        request = self._request
        reply = Reply(
            kind, self.connection_id, request.request_id, request.assistant_message_id, seq, self._attempt, code, frame
        )
        done = self._batcher.add(self.reply_to, reply)
        if not self._unconfirmed or self._unconfirmed[-1] is not done:
            self._unconfirmed.append(done)
        return done

    def _check(self) -> None:
        """Forget the published batches; raise the error of one that failed."""
        pending = []
        for done in self._unconfirmed:
            if not done.done():
                pending.append(done)
            elif (error := done.exception()) is not None:
                raise error
        self._unconfirmed = pending

    async def _settled(self) -> None:
        """Wait until every frame added so far is published (or raise why one was not)."""
        if self._unconfirmed:
            # ``wait``, not ``gather``: a batch's future is shared by every answer in it, and a
            # cancelled answer must not cancel it for the others
            await asyncio.wait(self._unconfirmed)
        self._check()

    async def _paced(self) -> None:
        """While the batcher is over its budget, wait for this answer's frames to be published."""
        if self._batcher.backlogged:
            await self._settled()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

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
        self._add("start", self._start_frame(), self._next_seq())
        await self._paced()

    async def chunk(self, delta: str) -> None:
        seq = self._next_seq()
        self._sent.append((seq, delta))
        self._add("chunk", self._chunk_frame(delta, seq), seq)
        await self._paced()

    async def end(self, content: str, *, finish_reason: str, usage: dict[str, Any] | None) -> None:
        data = {
            "messageId": self._request.assistant_message_id,
            "content": content,
            "usage": usage,
            "finishReason": finish_reason,
        }
        self._add("end", response_end_frame(data), self._next_seq())
        await self._settled()

    async def error(self, code: str, message: str) -> None:
        data = {"code": code, "message": message, "messageId": self._request.assistant_message_id}
        self._add("error", error_data_frame(data), self._next_seq(), code=code)
        await self._settled()

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
        self.connection_id, self.reply_to = connection_id, reply_to
        same = seen_attempt == self._attempt
        self._add("start", self._start_frame(resumed=same), 0)
        for seq, delta in self._sent:
            if seq > (last_seq if same else -1):
                self._add("chunk", self._chunk_frame(delta, seq), seq)
        await self._paced()

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
