"""One streamed answer: the chunks as they come, then its end.

An ``Answer`` is fed by the client's single reader task (synchronously, no task of its own) and
consumed by whoever asked: ``async for event in answer`` yields ``AnswerChunk``s and, last, the
``AnswerEnd``; ``await answer.result()`` waits for the end and returns it. A failure (an ``error``
frame for this answer, a lost connection) is raised from the iteration or from ``result()``.
Monotonic timestamps (``sent_at``, ``accepted_at``, ``started_at``, ``first_chunk_at``, ``ended_at``)
let load tools measure without wrapping the client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AnswerChunk:
    delta: str
    seq: int | None


@dataclass(frozen=True, slots=True)
class AnswerRestarted:
    """The request was delivered again (a worker failed mid-answer): the text starts over from here."""

    attempt: int


@dataclass(frozen=True, slots=True)
class AnswerEnd:
    message_id: str
    content: str
    finish_reason: str
    usage: dict[str, Any] | None = None
    recovered: bool = False
    """the end was read from the chat's history after a reconnect rather than streamed."""


Event = AnswerChunk | AnswerRestarted | AnswerEnd


@dataclass(eq=False, slots=True)
class Answer:
    """The assistant's answer to one ``send``; ``message_id`` is known once the answer starts."""

    request_id: int
    chat_id: str | None
    _cancel: Callable[[Answer], Awaitable[None]] = field(repr=False)
    user_message_id: str | None = None
    message_id: str | None = None
    last_seq: int | None = None
    """the sequence number of the last chunk received: what a resume asks to continue after."""
    attempt: int = 1
    sent_at: float = field(default_factory=time.monotonic)
    accepted_at: float | None = None
    started_at: float | None = None
    first_chunk_at: float | None = None
    ended_at: float | None = None
    end: AnswerEnd | None = None
    error: BaseException | None = None
    _parts: list[str] = field(default_factory=list, repr=False)
    _events: asyncio.Queue[Event | BaseException] = field(default_factory=asyncio.Queue, repr=False)
    _accepted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future(), repr=False
    )
    _finished: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future(), repr=False
    )
    _consumed: bool = field(default=False, repr=False)
    _recovering: bool = field(default=False, repr=False)
    """rejoined after a reconnect and waiting for the rest (resumed frames or the stored answer)."""

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    @property
    def done(self) -> bool:
        return self.end is not None or self.error is not None

    # ------------------------------------------------------------------ fed by the client

    def _on_accepted(self, user_message_id: str) -> None:
        self.user_message_id = user_message_id
        self.accepted_at = time.monotonic()
        if not self._accepted.done():
            self._accepted.set_result(None)

    def _on_start(self, message_id: str) -> None:
        self.message_id = message_id
        if self.started_at is None:
            self.started_at = time.monotonic()

    def _on_restart(self, attempt: int) -> None:
        self.attempt = attempt
        self.last_seq = None
        self._parts.clear()
        self._events.put_nowait(AnswerRestarted(attempt))

    def _on_chunk(self, delta: str, seq: int | None) -> None:
        self._recovering = False
        if seq is not None:
            if self.last_seq is not None and seq <= self.last_seq:
                return  # already seen: a resume replays from the last sequence it knows
            self.last_seq = seq
        if self.first_chunk_at is None:
            self.first_chunk_at = time.monotonic()
        self._parts.append(delta)
        self._events.put_nowait(AnswerChunk(delta, seq))

    def _on_end(self, end: AnswerEnd) -> None:
        if self.done:
            return
        if end.recovered and end.content.startswith(self.text) and len(end.content) > len(self.text):
            rest = end.content[len(self.text) :]
            self._parts.append(rest)
            self._events.put_nowait(AnswerChunk(rest, None))
        self.end = end
        self.ended_at = time.monotonic()
        self._events.put_nowait(end)
        self._finished.set_result(None)

    def _on_error(self, error: BaseException) -> None:
        if self.done:
            return
        self.error = error
        self.ended_at = time.monotonic()
        if not self._accepted.done():
            self._accepted.set_exception(error)
            self._accepted.exception()  # retrieved: whoever awaits it re-raises; nobody else must warn
        self._events.put_nowait(error)
        self._finished.set_result(None)

    # ------------------------------------------------------------------ for the caller

    async def __aiter__(self) -> AsyncIterator[Event]:
        """Chunks in order, then the ``AnswerEnd``; raises the answer's error instead of ending.

        An ``AnswerRestarted`` in between means the text starts over (the worker failed mid-answer and
        the request was delivered again): drop what was shown of this answer.
        """
        if self._consumed:
            raise RuntimeError("an answer can be iterated once; use result() or text afterwards")
        self._consumed = True
        while True:
            event = await self._events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, AnswerEnd):
                return

    async def deltas(self) -> AsyncIterator[str]:
        """Only the text deltas, in order (after an ``AnswerRestarted`` they start the text again)."""
        async for event in self:
            if isinstance(event, AnswerChunk):
                yield event.delta

    async def result(self) -> AnswerEnd:
        """Wait for the end of the answer and return it (or raise the answer's error)."""
        await asyncio.shield(self._finished)
        if self.error is not None:
            raise self.error
        assert self.end is not None
        return self.end

    async def cancel(self) -> None:
        """Ask the gateway to stop this answer; it then ends with ``finish_reason == "cancelled"``."""
        if not self.done:
            await self._cancel(self)
