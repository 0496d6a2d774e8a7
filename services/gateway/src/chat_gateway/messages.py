"""A user's message from its frame to the broker: checks, the stored question, ``message_accepted``, the publish.

Contract of ``send``: when ``message_accepted`` goes out the question is stored and committed (it is
in the history of every later join; the questions of concurrent messages share one statement) and
the request is in flight (``InFlight``); a failed publish then ends it with an error frame naming
the message, and the stored question is marked failed. A check that refuses raises ``ChatError``
before anything is stored.
"""

from __future__ import annotations

import contextlib
import unicodedata
import uuid
from dataclasses import dataclass

from chat_common.broker import now_ms
from chat_common.envelopes import ChatRequest, ControlMessage
from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import Cancel, SendMessage
from chat_common.group_commit import GroupCommit
from chat_common.server_frames import message_accepted_frame
from chat_common.store import UNAVAILABLE_ERRORS, ChatStore, QuestionRow
from chat_gateway.admission import AdmissionStore
from chat_gateway.broker import GatewayBroker
from chat_gateway.connection import Connection
from chat_gateway.inflight import InFlight
from chat_gateway.refusals import Refusal
from chat_gateway.tracing import start_message_span, use_span


def normalise_content(text: str) -> str:
    """Unicode NFC, and no control characters other than newline and tab."""
    text = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageLimits:
    max_length: int
    """``WS_MAX_MESSAGE_LENGTH``: characters as the user sent them."""
    per_window: int
    """``WS_RATE_LIMIT_MAX_MESSAGES`` per ``window_ms``."""
    window_ms: int
    request_timeout_ms: int
    max_tokens: int
    reply_to: str
    """this gateway's reply queue (``INSTANCE_ID``)."""


@dataclass(slots=True)
class Messages:
    store: ChatStore
    questions: GroupCommit[QuestionRow, None]
    """the questions of concurrent messages stored in one statement; its writer runs in the lifespan."""
    admission: AdmissionStore
    broker: GatewayBroker
    inflight: InFlight
    limits: MessageLimits

    async def send(self, connection: Connection, frame: SendMessage, user_id: str) -> None:
        content = await self._checked(connection, frame, user_id)
        request = self._request(connection, user_id)
        span = start_message_span(request)
        with use_span(span, error_code=ErrorCode.INTERNAL.value):
            question = QuestionRow(request.user_message_id, request.chat_id, request.request_id, content)
            await self.questions.submit(question)
        accepted = {"messageId": request.user_message_id, "chatId": request.chat_id}
        connection.send(message_accepted_frame(accepted, frame.requestId))
        pending = self.inflight.open(connection, request, span)
        try:
            with use_span(span):
                await self.broker.publish_request(request)
        except ChatError as error:
            self.inflight.finish(connection, pending, error_code=error.code.value)
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                await self.store.mark_request(request.request_id, "failed", error_code=error.code.value)
            error.message_id = request.user_message_id
            raise

    async def _checked(self, connection: Connection, frame: SendMessage, user_id: str) -> str:
        """The content to store, or the ``ChatError`` that refuses the message."""
        if connection.chat_id is None or connection.chat_type is None:
            raise ChatError(ErrorCode.CHAT_NOT_FOUND, "Chat not found: join or create a chat first")
        if frame.data.chatId is not None and frame.data.chatId != connection.chat_id:
            raise ChatError(ErrorCode.CHAT_NOT_FOUND, "Chat not found: chatId is not the current chat")
        # the limit counts what the user sent: NFC may lengthen text (U+0958 becomes two characters)
        sent, limit = len(frame.data.content), self.limits.max_length
        if sent > limit:
            raise Refusal(
                ErrorCode.MESSAGE_TOO_LONG,
                f"Message too long: {sent} characters, at most {limit}",
                reason="content_length",
            )
        content = normalise_content(frame.data.content)
        if not content.strip():
            raise Refusal(ErrorCode.INVALID_MESSAGE, "Invalid message: content is empty", reason="empty_content")
        retry_after = await self.admission.hit_rate(user_id, self.limits.per_window, self.limits.window_ms)
        if retry_after is not None:
            raise Refusal(ErrorCode.RATE_LIMITED, retry_after_ms=retry_after, reason="user_rate")
        return content

    def _request(self, connection: Connection, user_id: str) -> ChatRequest:
        assert connection.chat_id is not None  # checked by _checked
        assert connection.chat_type is not None
        return ChatRequest(
            request_id=str(uuid.uuid4()),
            user_message_id=str(uuid.uuid4()),
            assistant_message_id=str(uuid.uuid4()),
            chat_id=connection.chat_id,
            chat_type=connection.chat_type,
            user_id=user_id,
            connection_id=connection.id,
            reply_to=self.limits.reply_to,
            deadline_ms=now_ms() + self.limits.request_timeout_ms,
            max_tokens=self.limits.max_tokens,
        )

    async def cancel(self, connection: Connection, frame: Cancel) -> None:
        """Stop the answer(s) streaming on this connection; the worker ends them with ``finishReason: cancelled``."""
        wanted = frame.data.messageId
        targets = [
            p
            for p in connection.pending.values()
            if wanted is None or wanted in (p.assistant_message_id, p.user_message_id)
        ]
        for pending in targets:
            await self.broker.publish_control(
                ControlMessage(
                    kind="cancel", request_id=pending.request_id, connection_id=connection.id, reason="cancelled"
                )
            )

    async def resume(
        self, connection: Connection, user_id: str, message_id: str, last_seq: int | None, *, attempt: int = 1
    ) -> None:
        """Ask the worker streaming answer ``message_id`` to continue it on this connection, after
        ``last_seq``; an answer already stored is in the history the client just received."""
        if not self.inflight.expect_resume(connection, message_id):
            return
        await self.broker.publish_control(
            ControlMessage(
                kind="resume",
                message_id=message_id,
                user_id=user_id,
                connection_id=connection.id,
                reply_to=self.limits.reply_to,
                last_seq=-1 if last_seq is None else last_seq,
                attempt=attempt,
            )
        )
