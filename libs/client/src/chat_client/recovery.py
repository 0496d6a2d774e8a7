"""Answers across reconnects: which answer a rejoin asks to resume, and finishing the others from the history.

After a (re)join, an answer whose end is in the chat's history is completed from it (``recovered``);
the others wait: every ``resume_timeout`` while one of them receives nothing, the history is loaded
again (``switch_chat``); ``recover_within`` after the rejoin the stalled ones fail with
``AnswerInterrupted``. An answer that streams again (the gateway resumed it) is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from chat_client.answer import Answer, AnswerEnd
from chat_client.errors import AnswerInterrupted, ChatClientError, UpstreamError
from chat_client.models import ChatInfo, ChatType, HistoryMessage
from chat_client.routing import Routing

logger = logging.getLogger("chat_client")


class Chat(Protocol):
    """The client's current chat, as recovery reads it."""

    chat_id: str | None
    chat_type: ChatType
    history: tuple[HistoryMessage, ...]

    async def switch_chat(self, chat_id: str, chat_type: ChatType) -> ChatInfo: ...


def _progress(answer: Answer) -> tuple[int | None, int]:
    return answer.last_seq, len(answer._parts)


@dataclass(slots=True)
class Recovery:
    chat: Chat
    routing: Routing
    spawn: Callable[[Coroutine[Any, Any, None]], None]
    resume_timeout: float
    recover_within: float
    closed: bool = False
    _until: float = 0.0
    _timer: asyncio.TimerHandle | None = None
    _progress: dict[int, tuple[int | None, int]] = field(default_factory=dict)

    def streaming(self) -> Answer | None:
        """The latest started, unfinished answer of the current chat: the one a rejoin asks to resume."""
        chat_id = self.chat.chat_id
        candidates = [a for a in self.routing.open_answers() if a.message_id and a.chat_id == chat_id and not a.done]
        return candidates[-1] if candidates else None

    def resume_data(self) -> dict[str, Any]:
        """What a rejoin adds to ``join_chat`` to resume the answer being streamed: nothing if none is."""
        streaming = self.streaming()
        if streaming is None:
            return {}
        data: dict[str, Any] = {"messageId": streaming.message_id}
        if streaming.last_seq is not None:
            data["lastSeq"] = streaming.last_seq
            if streaming.attempt > 1:  # the sequence numbers count in this attempt
                data["attempt"] = streaming.attempt
        return data

    def joined(self) -> None:
        """A (re)join answered: the recovery window starts now."""
        self._until = time.monotonic() + self.recover_within
        self.recover()

    def recover(self) -> None:
        """Finish the answers whose end is in the history; check the rest again later."""
        waiting = False
        for answer in self.routing.open_answers():
            if answer.done or answer.user_message_id is None:
                continue
            if answer.chat_id != self.chat.chat_id:
                self.routing.fail(answer, AnswerInterrupted("the connection was restored in another chat"))
                continue
            stored = self._stored(answer)
            if stored is None or stored.status not in ("complete", "cancelled", "failed"):
                answer._recovering = True
                waiting = True
            elif stored.status == "failed":
                self.routing.fail(answer, UpstreamError("The language model failed to answer", message_id=stored.id))
            else:
                reason = "cancelled" if stored.status == "cancelled" else "stop"
                logger.info("answer %s completed from the chat history after a reconnect", stored.id)
                answer._on_start(stored.id)
                answer._on_end(AnswerEnd(stored.id, stored.content, reason, recovered=True))
                self.routing.forget(answer)
        if waiting:
            self._schedule()

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()

    def _schedule(self) -> None:
        if self.closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._progress = {a.request_id: _progress(a) for a in self.routing.open_answers() if not a.done}
        self._timer = asyncio.get_running_loop().call_later(self.resume_timeout, lambda: self.spawn(self._check()))

    def _stored(self, answer: Answer) -> HistoryMessage | None:
        after_question = False
        for message in self.chat.history:
            if answer.message_id is not None and message.id == answer.message_id:
                return message
            if message.id == answer.user_message_id:
                after_question = True
            elif after_question and message.role == "assistant" and answer.message_id is None:
                return message
        return None

    async def _check(self) -> None:
        """The answers that received nothing since the last check are looked up in the history again;
        past ``recover_within`` they are given up."""
        self._timer = None
        open_answers = [a for a in self.routing.open_answers() if not a.done and a.user_message_id is not None]
        if self.closed or not open_answers:
            return
        stalled = [a for a in open_answers if self._progress.get(a.request_id) == _progress(a)]
        if not stalled:  # every open answer is streaming (resumed): keep an eye on it, no more
            self._schedule()
            return
        if time.monotonic() > self._until:
            for answer in stalled:
                self.routing.fail(answer, AnswerInterrupted("the answer was cut off by a reconnect"))
            if len(stalled) < len(open_answers):
                self._schedule()
            return
        chat_id = self.chat.chat_id
        if chat_id is not None:
            with contextlib.suppress(ChatClientError, TimeoutError):
                await self.chat.switch_chat(chat_id, self.chat.chat_type)  # answers with the chat's history
        self.recover()
