"""What each client frame does once the connection is authenticated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import unicodedata
import uuid
from typing import Any

from chat_common.broker import now_ms
from chat_common.envelopes import ChatRequest, ControlMessage
from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import (
    Cancel,
    ChatType,
    ClientFrame,
    CreateChat,
    JoinChat,
    ListChats,
    Ping,
    RefreshToken,
    SendMessage,
    SwitchChat,
    encode_frame,
    error_frame,
    pong_frame,
)
from chat_common.store import UNAVAILABLE_ERRORS, Chat, StoredMessage
from chat_gateway.admission import BUDGET_WINDOW_MS
from chat_gateway.auth import Identity
from chat_gateway.connection import Connection, PendingRequest
from chat_gateway.refusals import Refusal, is_refusal, reason_of, record_refusal
from chat_gateway.state import GatewayState
from chat_gateway.tracing import start_message_span, use_span

logger = logging.getLogger(__name__)

RequestIdT = str | int | None

_MAX_TIMER_S = 3600.0


def normalise_content(text: str) -> str:
    """Unicode NFC, and no control characters other than newline and tab."""
    text = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")


class FrameHandler:
    def __init__(self, state: GatewayState, connection: Connection) -> None:
        self.state = state
        self.connection = connection
        self._closing: asyncio.Task[None] | None = None

    async def dispatch(self, frame: ClientFrame) -> None:
        """Run one frame; a ``ChatError`` becomes an error frame and the connection stays open
        unless the error's code closes it. A frame that arrives once the connection is closing is
        dropped unanswered: the client, reconnecting, sees from the history that it was not taken."""
        if self.connection.closed:
            return
        self.connection.dispatching += 1
        try:
            await self._run(frame)
        except ChatError as error:
            await self.reject(error, frame.requestId)
        except UNAVAILABLE_ERRORS as exc:
            # PostgreSQL (or another store) is away: a clear, retryable answer, not INTERNAL
            logger.warning("connection %s: %s failed: store unavailable (%s)", self.connection.id, frame.type, exc)
            busy = ChatError(
                ErrorCode.BUSY,
                "Server busy: storage unavailable, try again later",
                retry_after_ms=self.state.settings.busy_retry_after,
            )
            await self.reject(busy, frame.requestId)
        except Exception:
            logger.exception("connection %s: %s failed", self.connection.id, frame.type)
            self.state.metrics.errors.labels(ErrorCode.INTERNAL.value).inc()
            self.connection.send(error_frame(ChatError(ErrorCode.INTERNAL), frame.requestId))
        finally:
            self.connection.dispatching -= 1

    async def _run(self, frame: ClientFrame) -> None:
        match frame:
            case Ping():
                self.connection.send(pong_frame(frame.requestId))
            case SendMessage():
                await self.send_message(frame)
            case JoinChat():
                await self.join_chat(frame)
            case SwitchChat():
                await self.open_chat(frame.data.chatId, frame.data.chatType, "chat_switched", frame.requestId)
            case CreateChat():
                await self.create_chat(frame.data.chatType, "chat_created", frame.requestId)
            case Cancel():
                await self.cancel(frame)
            case RefreshToken():
                await self.refresh_token(frame)
            case ListChats():
                chats = await self.state.store.list_chats(self._user(), limit=frame.data.limit)
                self.connection.send(encode_frame("chats", {"chats": chats}, frame.requestId))

    # ------------------------------------------------------------------ authentication

    async def reject(self, error: ChatError, request_id: RequestIdT = None) -> None:
        """Tell the client; count and log a refusal; close the connection if the code says so."""
        if is_refusal(error):
            record_refusal(self.state.metrics, self.connection, error.code.value, reason_of(error))
        self.state.metrics.errors.labels(error.code.value).inc()
        self.connection.send(error_frame(error, request_id))
        if error.close_code is not None:
            await self.connection.close(error.close_code, error.message[:120])

    async def authenticate(self, frame: JoinChat) -> None:
        """Verify the token and take a user slot; raises ``ChatError`` that closes the connection."""
        identity = await self.state.verifier.verify(frame.data.token)
        settings = self.state.settings
        if not await self.state.admission.acquire_connection(
            identity.user_id, self.connection.id, settings.ws_max_connections_per_user
        ):
            raise Refusal(ErrorCode.TOO_MANY_CONNECTIONS, reason="per_user")
        self.connection.user_id = identity.user_id
        self.state.registry.bind_user(self.connection)
        self.state.metrics.users.set(self.state.registry.users)
        self._arm_expiry(identity)

    async def refresh_token(self, frame: RefreshToken) -> None:
        identity = await self._same_user(frame.data.token)
        self._arm_expiry(identity)
        self.connection.send(
            encode_frame("token_refreshed", {"expiresAt": int(identity.expires_at * 1000)}, frame.requestId)
        )

    async def _same_user(self, token: str) -> Identity:
        identity = await self.state.verifier.verify(token)
        if identity.user_id != self.connection.user_id:
            raise Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token is for another user", reason="other_user")
        return identity

    def _arm_expiry(self, identity: Identity) -> None:
        """Close the connection when its token expires, unless a fresh one arrives first.

        One timer per connection (a heap entry, no task); a later token re-arms it. Far-off expiries
        are checked again every ``_MAX_TIMER_S`` rather than scheduled at once.
        """
        connection = self.connection
        connection.token_expires_at = identity.expires_at
        if connection.expiry_timer is not None:
            connection.expiry_timer.cancel()
        deadline = identity.expires_at + self.state.settings.jwt_leeway
        delay = min(max(0.0, deadline - time.time()), _MAX_TIMER_S)
        connection.expiry_timer = asyncio.get_running_loop().call_later(delay, self._check_expiry)

    def _check_expiry(self) -> None:
        connection = self.connection
        connection.expiry_timer = None
        if connection.closed:
            return
        remaining = connection.token_expires_at + self.state.settings.jwt_leeway - time.time()
        if remaining > 0:
            delay = min(remaining, _MAX_TIMER_S)
            connection.expiry_timer = asyncio.get_running_loop().call_later(delay, self._check_expiry)
            return
        error = Refusal(ErrorCode.UNAUTHORIZED, "Unauthorized: token expired", reason="token_expired")
        self._closing = asyncio.get_running_loop().create_task(self.reject(error))

    # ------------------------------------------------------------------ chats

    async def join_chat(self, frame: JoinChat) -> None:
        # Every join_chat carries a token: on an authenticated connection it must be the same user's,
        # and a fresh one extends the connection like refresh_token (verifying again is a cache hit).
        self._arm_expiry(await self._same_user(frame.data.token))
        if frame.data.chatId is None:
            await self._spend("chats")
            chat = await self.state.store.create_chat(self._user(), frame.data.chatType)
        else:
            await self._spend("history")
            chat = await self._owned_chat(frame.data.chatId, frame.data.chatType)
        history = await self._enter(chat, "chat_joined", frame.requestId, with_user=True)
        wanted = frame.data.messageId
        if wanted is not None and frame.data.chatId is not None and all(m.id != wanted for m in history):
            await self.resume(wanted, frame.data.lastSeq, attempt=frame.data.attempt or 1)

    async def resume(self, message_id: str, last_seq: int | None, *, attempt: int = 1) -> None:
        """Ask the worker streaming answer ``message_id`` to continue it on this connection, after
        ``last_seq``; an answer already stored is in the history the client just received."""
        connection = self.connection
        if message_id in connection.resumes or any(
            p.assistant_message_id == message_id for p in connection.pending.values()
        ):
            return
        # every resume is broadcast to every worker: one per answer in flight, one per connection
        wait_s = self.state.router.resume_wait_left(connection, message_id)
        if wait_s is not None:
            raise Refusal(
                ErrorCode.RATE_LIMITED,
                "Rate limit exceeded: a resume is already waiting for its answer",
                retry_after_ms=max(1, math.ceil(wait_s * 1000)),
                reason="resume_in_flight",
            )
        pending = PendingRequest(
            request_id="",
            user_message_id="",
            assistant_message_id=message_id,
            chat_id=connection.chat_id or "",
            started=time.monotonic(),
        )
        self.state.router.expect_resume(connection, pending)
        await self.state.broker.publish_control(
            ControlMessage(
                kind="resume",
                message_id=message_id,
                user_id=self._user(),
                connection_id=connection.id,
                reply_to=self.state.settings.instance_id,
                last_seq=-1 if last_seq is None else last_seq,
                attempt=attempt,
            )
        )

    async def open_chat(self, chat_id: str, chat_type: ChatType, reply: str, request_id: RequestIdT) -> None:
        await self._spend("history")
        chat = await self._owned_chat(chat_id, chat_type)
        await self._enter(chat, reply, request_id)

    async def create_chat(self, chat_type: ChatType, reply: str, request_id: RequestIdT) -> None:
        await self._spend("chats")
        chat = await self.state.store.create_chat(self._user(), chat_type)
        self._move_to(chat)
        self.connection.send(encode_frame(reply, {"chatId": chat.id, "chatType": chat.chat_type}, request_id))

    async def _spend(self, bucket: str) -> None:
        """Count one costly action against the user's per-minute budget (all connections; all
        gateways with Redis); ``RATE_LIMITED`` with ``retryAfterMs`` once it is spent."""
        settings = self.state.settings
        limit, what = (
            (settings.ws_chat_creates_per_minute, "new chats")
            if bucket == "chats"
            else (settings.ws_history_reads_per_minute, "chat history loads")
        )
        retry_after = await self.state.admission.hit_rate(self._user(), limit, BUDGET_WINDOW_MS, bucket=bucket)
        if retry_after is not None:
            raise Refusal(
                ErrorCode.RATE_LIMITED,
                f"Rate limit exceeded: at most {limit} {what} per minute",
                retry_after_ms=retry_after,
                reason=f"{bucket}_rate",
            )

    async def _owned_chat(self, chat_id: str, chat_type: ChatType) -> Chat:
        chat = await self.state.store.get_chat(chat_id, self._user())
        if chat is None or chat.chat_type != chat_type:
            raise ChatError(ErrorCode.CHAT_NOT_FOUND)
        return chat

    async def _enter(
        self, chat: Chat, reply: str, request_id: RequestIdT, *, with_user: bool = False
    ) -> list[StoredMessage]:
        history = await self.state.store.history(chat.id, limit=self.state.settings.history_limit)
        self._move_to(chat)
        data: dict[str, Any] = {"chatId": chat.id, "chatType": chat.chat_type}
        if with_user:
            data["userId"] = self.connection.user_id
        data["history"] = [message.to_client() for message in history]
        self.connection.send(encode_frame(reply, data, request_id))
        return history

    def _move_to(self, chat: Chat) -> None:
        self.connection.chat_id = chat.id
        self.connection.chat_type = chat.chat_type

    def _user(self) -> str:
        user_id = self.connection.user_id
        if user_id is None:  # pragma: no cover - frames are dispatched only after authentication
            raise ChatError(ErrorCode.UNAUTHORIZED)
        return user_id

    # ------------------------------------------------------------------ messages

    async def send_message(self, frame: SendMessage) -> None:
        state, connection, settings = self.state, self.connection, self.state.settings
        if connection.chat_id is None or connection.chat_type is None:
            raise ChatError(ErrorCode.CHAT_NOT_FOUND, "Chat not found: join or create a chat first")
        if frame.data.chatId is not None and frame.data.chatId != connection.chat_id:
            raise ChatError(ErrorCode.CHAT_NOT_FOUND, "Chat not found: chatId is not the current chat")
        # the limit counts what the user sent: NFC may lengthen text (U+0958 becomes two characters)
        sent = len(frame.data.content)
        if sent > settings.ws_max_message_length:
            raise Refusal(
                ErrorCode.MESSAGE_TOO_LONG,
                f"Message too long: {sent} characters, at most {settings.ws_max_message_length}",
                reason="content_length",
            )
        content = normalise_content(frame.data.content)
        if not content.strip():
            raise Refusal(ErrorCode.INVALID_MESSAGE, "Invalid message: content is empty", reason="empty_content")
        retry_after = await state.admission.hit_rate(
            self._user(), settings.ws_rate_limit_max_messages, settings.ws_rate_limit_window
        )
        if retry_after is not None:
            raise Refusal(ErrorCode.RATE_LIMITED, retry_after_ms=retry_after, reason="user_rate")

        request = ChatRequest(
            request_id=str(uuid.uuid4()),
            user_message_id=str(uuid.uuid4()),
            assistant_message_id=str(uuid.uuid4()),
            chat_id=connection.chat_id,
            chat_type=connection.chat_type,
            user_id=self._user(),
            connection_id=connection.id,
            reply_to=settings.instance_id,
            deadline_ms=now_ms() + settings.request_timeout,
            max_tokens=settings.ws_max_tokens,
        )
        span = start_message_span(request)
        with use_span(span, error_code=ErrorCode.INTERNAL.value):
            await state.store.add_user_message(
                message_id=request.user_message_id,
                chat_id=request.chat_id,
                request_id=request.request_id,
                content=content,
            )
        connection.send(
            encode_frame(
                "message_accepted",
                {"messageId": request.user_message_id, "chatId": request.chat_id},
                frame.requestId,
            )
        )
        pending = PendingRequest(
            request_id=request.request_id,
            user_message_id=request.user_message_id,
            assistant_message_id=request.assistant_message_id,
            chat_id=request.chat_id,
            started=time.monotonic(),
            span=span,
        )
        connection.pending[request.request_id] = pending
        state.metrics.in_flight.inc()
        state.metrics.record_request()
        try:
            with use_span(span):
                await state.broker.publish_request(request)
        except ChatError as error:
            state.router.finish(connection, pending, error_code=error.code.value)
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                await state.store.mark_request(request.request_id, "failed", error_code=error.code.value)
            error.message_id = request.user_message_id
            raise
        state.router.watch(connection, pending)

    async def cancel(self, frame: Cancel) -> None:
        """Stop the answer(s) streaming on this connection; the worker ends them with ``finishReason: cancelled``."""
        wanted = frame.data.messageId
        targets = [
            p
            for p in self.connection.pending.values()
            if wanted is None or wanted in (p.assistant_message_id, p.user_message_id)
        ]
        for pending in targets:
            await self.state.broker.publish_control(
                ControlMessage(
                    kind="cancel", request_id=pending.request_id, connection_id=self.connection.id, reason="cancelled"
                )
            )
