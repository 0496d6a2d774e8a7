"""The frames the server sends (SPEC §2): one model each, the one definition, and the encoder built from it.

Every server frame is encoded by the ``FrameEncoder`` of its model (``message_accepted_frame``,
``response_chunk_frame``, ``error_frame``, ...): its ``type`` comes from the model, its ``data``
is a plain dict, so the hot path builds no model (the worker encodes each reply frame once; the
gateway forwards it undecoded). With ``CHAT_CHECK_FRAMES=1`` (the test suite sets it, for every
process it starts) each encoder validates what it produced against its model (``extra="forbid"``):
a key the model does not define, or one missing, fails the test that produced it.
``docs/asyncapi.json`` is generated from the same models.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Protocol, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from chat_common.errors import ChatError, ErrorCode
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


CHECK_FRAMES = os.environ.get("CHAT_CHECK_FRAMES") == "1"
"""validate every encoded frame against its model (tests; costs a model validation per frame)."""


class FrameEncoder(Protocol):
    """Encodes frames of one model: ``encoder(data, request_id)`` is the frame's JSON text."""

    def __call__(self, data: Mapping[str, Any], request_id: str | int | None = None) -> str: ...


def frame_encoder(model: type[_Frame]) -> FrameEncoder:
    """The encoder of ``model``'s frames (a closure: as cheap per frame as a hand-written dict)."""
    (frame_type,) = get_args(model.model_fields["type"].annotation)

    def encode(data: Mapping[str, Any], request_id: str | int | None = None) -> str:
        frame: dict[str, Any] = {"type": frame_type, "data": data}
        if request_id is not None:
            frame["requestId"] = request_id
        text = orjson.dumps(frame).decode()
        if CHECK_FRAMES:
            model.model_validate_json(text)
        return text

    return encode


chat_joined_frame = frame_encoder(ChatJoined)
chat_created_frame = frame_encoder(ChatCreated)
chat_switched_frame = frame_encoder(ChatSwitched)
chats_frame = frame_encoder(Chats)
message_accepted_frame = frame_encoder(MessageAccepted)
response_start_frame = frame_encoder(ResponseStart)
response_chunk_frame = frame_encoder(ResponseChunk)
response_end_frame = frame_encoder(ResponseEnd)
token_refreshed_frame = frame_encoder(TokenRefreshed)
error_data_frame = frame_encoder(Error)
"""an ``error`` frame from its data (the worker's, whose code comes from elsewhere); see ``error_frame``."""
_pong = frame_encoder(Pong)


def error_frame(error: ChatError, request_id: str | int | None = None) -> str:
    data: dict[str, Any] = {"code": error.code.value, "message": error.message}
    if error.retry_after_ms is not None:
        data["retryAfterMs"] = error.retry_after_ms
    if error.message_id is not None:
        data["messageId"] = error.message_id
    return error_data_frame(data, request_id)


def pong_frame(request_id: str | int | None = None) -> str:
    return _pong({"timestamp": int(time.time() * 1000)}, request_id)
