"""The chat a connection is in: join, switch, create and list, each checked against the user's budget and ownership.

A chat is entered only if the user owns it and its type matches (else ``CHAT_NOT_FOUND``, whether
it exists or not: no probing of other users' ids). Creating a chat and loading a history are costly
and counted per user per minute across connections (``WS_CHAT_CREATES_PER_MINUTE``,
``WS_HISTORY_READS_PER_MINUTE``; across gateways with Redis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import ChatType, JoinChat
from chat_common.server_frames import (
    FrameEncoder,
    chat_created_frame,
    chat_joined_frame,
    chat_switched_frame,
    chats_frame,
)
from chat_common.store import Chat, ChatStore, StoredMessage
from chat_gateway.admission import BUDGET_WINDOW_MS, AdmissionStore
from chat_gateway.connection import Connection
from chat_gateway.messages import Messages
from chat_gateway.refusals import Refusal

RequestIdT = str | int | None
Budget = Literal["chats", "history"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatLimits:
    creates_per_minute: int
    history_reads_per_minute: int
    history_limit: int


@dataclass(slots=True)
class Chats:
    store: ChatStore
    admission: AdmissionStore
    messages: Messages
    limits: ChatLimits

    async def join(self, connection: Connection, frame: JoinChat, user_id: str) -> None:
        """``chat_joined`` with the history (a new chat without ``chatId``); naming an answer that is
        not in the history yet (``messageId``) resumes its stream on this connection."""
        data = frame.data
        if data.chatId is None:
            await self._spend(user_id, "chats")
            chat = await self.store.create_chat(user_id, data.chatType)
        else:
            await self._spend(user_id, "history")
            chat = await self._owned(user_id, data.chatId, data.chatType)
        history = await self._enter(connection, chat, chat_joined_frame, frame.requestId, user_id=user_id)
        wanted = data.messageId
        if wanted is not None and data.chatId is not None and all(m.id != wanted for m in history):
            await self.messages.resume(connection, user_id, wanted, data.lastSeq, attempt=data.attempt or 1)

    async def switch(
        self, connection: Connection, user_id: str, chat_id: str, chat_type: ChatType, request_id: RequestIdT
    ) -> None:
        await self._spend(user_id, "history")
        chat = await self._owned(user_id, chat_id, chat_type)
        await self._enter(connection, chat, chat_switched_frame, request_id)

    async def create(self, connection: Connection, user_id: str, chat_type: ChatType, request_id: RequestIdT) -> None:
        await self._spend(user_id, "chats")
        chat = await self.store.create_chat(user_id, chat_type)
        _move_to(connection, chat)
        connection.send(chat_created_frame({"chatId": chat.id, "chatType": chat.chat_type}, request_id))

    async def list_chats(self, connection: Connection, user_id: str, limit: int, request_id: RequestIdT) -> None:
        chats = await self.store.list_chats(user_id, limit=limit)
        connection.send(chats_frame({"chats": chats}, request_id))

    async def _spend(self, user_id: str, bucket: Budget) -> None:
        """Count one costly action against the user's per-minute budget; ``RATE_LIMITED`` with
        ``retryAfterMs`` once it is spent."""
        limit, what = (
            (self.limits.creates_per_minute, "new chats")
            if bucket == "chats"
            else (self.limits.history_reads_per_minute, "chat history loads")
        )
        retry_after = await self.admission.hit_rate(user_id, limit, BUDGET_WINDOW_MS, bucket=bucket)
        if retry_after is not None:
            raise Refusal(
                ErrorCode.RATE_LIMITED,
                f"Rate limit exceeded: at most {limit} {what} per minute",
                retry_after_ms=retry_after,
                reason=f"{bucket}_rate",
            )

    async def _owned(self, user_id: str, chat_id: str, chat_type: ChatType) -> Chat:
        chat = await self.store.get_chat(chat_id, user_id)
        if chat is None or chat.chat_type != chat_type:
            raise ChatError(ErrorCode.CHAT_NOT_FOUND)
        return chat

    async def _enter(
        self,
        connection: Connection,
        chat: Chat,
        reply: FrameEncoder,
        request_id: RequestIdT,
        *,
        user_id: str | None = None,
    ) -> list[StoredMessage]:
        history = await self.store.history(chat.id, limit=self.limits.history_limit)
        _move_to(connection, chat)
        data: dict[str, Any] = {"chatId": chat.id, "chatType": chat.chat_type}
        if user_id is not None:
            data["userId"] = user_id
        data["history"] = [message.to_client() for message in history]
        connection.send(reply(data, request_id))
        return history


def _move_to(connection: Connection, chat: Chat) -> None:
    connection.chat_id = chat.id
    connection.chat_type = chat.chat_type
