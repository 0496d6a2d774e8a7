"""Models of the frames the server sends (SPEC §2), for the protocol document and for conformance tests.

The hot path does not build these models: the worker encodes reply frames once as dicts
(``encode_frame``) and the gateway forwards them undecoded. The models describe those dicts exactly
(``extra="forbid"``); ``tests/client/test_protocol_document.py`` validates every frame a real
conversation produces against them, and ``docs/asyncapi.json`` is generated from them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from chat_common.errors import ErrorCode
from chat_common.frames import ChatType, RequestId


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HistoryMessage(_Data):
    id: str
    role: Literal["user", "assistant"]
    content: str
    createdAt: str = Field(description="ISO 8601 UTC, e.g. 2024-01-01T00:00:00.000Z")
    status: Literal["accepted", "complete", "cancelled", "failed"] = Field(
        description="accepted: the question awaits its answer; cancelled: a partial answer the user stopped"
    )


class ChatJoinedData(_Data):
    chatId: str
    chatType: ChatType
    userId: str
    history: list[HistoryMessage] = Field(description="recent messages, oldest first")


class ChatCreatedData(_Data):
    chatId: str
    chatType: ChatType


class ChatSwitchedData(_Data):
    chatId: str
    chatType: ChatType
    history: list[HistoryMessage]


class ChatSummary(_Data):
    chatId: str
    chatType: ChatType
    title: str | None = Field(description="the start of the chat's first message; null before it has one")
    updatedAt: str


class ChatsData(_Data):
    chats: list[ChatSummary] = Field(description="the user's chats, most recently used first")


class MessageAcceptedData(_Data):
    messageId: str = Field(description="id of the stored user message")
    chatId: str


class ResponseStartData(_Data):
    messageId: str = Field(description="id of the assistant message being generated")
    chatId: str
    userMessageId: str | None = Field(default=None, description="the question this answers")
    attempt: int | None = Field(
        default=None,
        description="present from the second delivery of a request on: the answer starts again from the"
        " beginning, drop what was received of this message",
    )
    resumed: bool | None = Field(
        default=None,
        description="true when this connection rejoined with messageId/lastSeq: the chunks after lastSeq follow",
    )


class ResponseChunkData(_Data):
    messageId: str
    delta: str
    seq: int = Field(description="sequence number within the answer; chunks arrive in order")


class Usage(_Data):
    promptTokens: int | None
    completionTokens: int | None
    totalTokens: int


class ResponseEndData(_Data):
    messageId: str
    content: str = Field(description="the full answer text")
    usage: Usage | None
    finishReason: str = Field(description="stop, length, cancelled, ... as the model or the user ended it")


class ErrorData(_Data):
    code: ErrorCode
    message: str = Field(description="human readable")
    retryAfterMs: int | None = Field(default=None, description="with RATE_LIMITED and BUSY: ms to wait")
    messageId: str | None = Field(default=None, description="the message the error is about, if any")


class PongData(_Data):
    timestamp: int = Field(description="server time, epoch ms")


class TokenRefreshedData(_Data):
    expiresAt: int = Field(description="expiry of the new token, epoch ms")


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    requestId: RequestId | None = Field(default=None, description="echoes the requestId of the frame this answers")


class ChatJoined(_Frame):
    type: Literal["chat_joined"]
    data: ChatJoinedData


class ChatCreated(_Frame):
    type: Literal["chat_created"]
    data: ChatCreatedData


class ChatSwitched(_Frame):
    type: Literal["chat_switched"]
    data: ChatSwitchedData


class Chats(_Frame):
    type: Literal["chats"]
    data: ChatsData


class MessageAccepted(_Frame):
    type: Literal["message_accepted"]
    data: MessageAcceptedData


class ResponseStart(_Frame):
    type: Literal["response_start"]
    data: ResponseStartData


class ResponseChunk(_Frame):
    type: Literal["response_chunk"]
    data: ResponseChunkData


class ResponseEnd(_Frame):
    type: Literal["response_end"]
    data: ResponseEndData


class Error(_Frame):
    type: Literal["error"]
    data: ErrorData


class Pong(_Frame):
    type: Literal["pong"]
    data: PongData


class TokenRefreshed(_Frame):
    type: Literal["token_refreshed"]
    data: TokenRefreshedData


SERVER_FRAMES: tuple[type[_Frame], ...] = (
    ChatJoined,
    ChatCreated,
    ChatSwitched,
    Chats,
    MessageAccepted,
    ResponseStart,
    ResponseChunk,
    ResponseEnd,
    Error,
    Pong,
    TokenRefreshed,
)

ServerFrame = Annotated[
    ChatJoined
    | ChatCreated
    | ChatSwitched
    | Chats
    | MessageAccepted
    | ResponseStart
    | ResponseChunk
    | ResponseEnd
    | Error
    | Pong
    | TokenRefreshed,
    Field(discriminator="type"),
]
server_frame_adapter: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)
