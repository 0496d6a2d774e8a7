"""The control messages every worker hears (``chat.control``): cancel an answer, or resume it on another connection.

``cancel`` stops an answer now, except for a closed connection (reason ``disconnected``), which gets
``RESUME_GRACE`` for the client to come back with ``resume``; ``resume`` re-targets the answer.
Every worker hears every ``resume`` and remembers the latest one per answer (``ResumeBook``): when a
worker dies after its client moved to another connection, the redelivered request is answered on
the connection that resumed it, not on the one named in the request. Controls are consumed without
acks: a lost one is a lost cancel, which the gateway's request timeout bounds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import pydantic
from aio_pika.abc import AbstractIncomingMessage

from chat_common.envelopes import ChatRequest, ControlMessage
from llm_worker.active import ActiveAnswers

logger = logging.getLogger(__name__)

RESUME_BOOK_SIZE = 10_000
"""resumes remembered at most (oldest forgotten first): a few hundred bytes each."""


class ResumeBook:
    """The latest ``resume`` heard for each answer, for ``keep_s`` (a request's lifetime).

    A redelivered request names the connection of its first attempt; the book tells where the client
    is now. Bounded by ``RESUME_BOOK_SIZE``; expired entries are dropped as new ones come in.
    """

    def __init__(self, *, keep_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._keep_s = keep_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ControlMessage]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def note(self, control: ControlMessage) -> None:
        if control.message_id is None:
            return
        now = self._clock()
        self._entries.pop(control.message_id, None)
        self._entries[control.message_id] = (now + self._keep_s, control)
        while self._entries:
            oldest_key, (expires, _) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= RESUME_BOOK_SIZE:
                break
            del self._entries[oldest_key]

    def latest(self, request: ChatRequest) -> ControlMessage | None:
        """The last resume of ``request``'s answer by the same user, if still fresh."""
        entry = self._entries.get(request.assistant_message_id)
        if entry is None or entry[0] < self._clock() or entry[1].user_id != request.user_id:
            return None
        return entry[1]


@dataclass(slots=True)
class Controls:
    """Consumes ``chat.control``: acts on the answers of ``ActiveAnswers`` and notes resumes in the ``ResumeBook``."""

    active: ActiveAnswers
    resumes: ResumeBook
    resume_grace_s: float

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            control = ControlMessage.model_validate_json(message.body)
        except pydantic.ValidationError:
            return
        if control.kind == "resume":
            await self.resume(control)
        else:
            self.cancel(control)

    def cancel(self, control: ControlMessage) -> None:
        for scope in self.active.targeted(control):
            if control.reason == "disconnected" and self.resume_grace_s > 0:
                if scope.pending_disconnect is None and scope.reason is None:
                    logger.info("request %s: connection closed; waiting for a resume", scope.request.request_id)
                    scope.pending_disconnect = asyncio.get_running_loop().call_later(
                        self.resume_grace_s, scope.cancel, "disconnected"
                    )
            elif scope.cancel(control.reason):
                logger.info("request %s: %s", scope.request.request_id, control.reason)

    async def resume(self, control: ControlMessage) -> None:
        if control.message_id is None or control.connection_id is None or control.reply_to is None:
            return
        self.resumes.note(control)
        scope = self.active.answering(control.message_id, control.user_id)
        if scope is None or scope.reason is not None or scope.replies is None:
            return
        if scope.pending_disconnect is not None:
            scope.pending_disconnect.cancel()
            scope.pending_disconnect = None
        logger.info("request %s resumed on connection %s", scope.request.request_id, control.connection_id)
        try:
            await scope.replies.retarget(
                control.connection_id, control.reply_to, last_seq=control.last_seq, seen_attempt=control.attempt
            )
        except Exception as exc:  # noqa: BLE001 - the client is told by the answer's own end or its timeout
            logger.warning("request %s: resume not sent (%r)", scope.request.request_id, exc)
