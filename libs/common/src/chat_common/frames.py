"""WebSocket frames of SPEC §2: ``{"type": ..., "data": {...}, "requestId"?: ...}``.

Client frames are parsed once, at the edge, by ``parse_client_frame``; anything that does not fit
raises ``ChatError(INVALID_MESSAGE)``. Server frames are built by the ``*_frame`` helpers, which
return the JSON text ready to send.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from chat_common.errors import ChatError, ErrorCode

ChatType = Literal["documents", "messages"]
CHAT_TYPES: tuple[ChatType, ...] = ("documents", "messages")

# Ids are opaque to clients; bound their size so that a hostile id costs nothing.
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# Echoed back as given, so it must be encodable: at most 64-bit integers.
RequestId = Annotated[str, StringConstraints(max_length=128)] | Annotated[int, Field(ge=-(2**63), lt=2**63)]


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class JoinChatData(_Data):
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]
    chatType: ChatType
    chatId: Id | None = None
    lastSeq: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    """with ``messageId`` of the answer being streamed: resume after this chunk sequence number."""
    messageId: Id | None = None
    attempt: Annotated[int, Field(ge=1, lt=2**31)] | None = None
    """with ``lastSeq``: the ``attempt`` of the ``response_start`` the client saw (1 when absent)."""


class SwitchChatData(_Data):
    chatId: Id
    chatType: ChatType


class CreateChatData(_Data):
    chatType: ChatType


class SendMessageData(_Data):
    content: str
    chatId: Id | None = None


class CancelData(_Data):
    messageId: Id | None = None


class RefreshTokenData(_Data):
    token: Annotated[str, StringConstraints(min_length=1, max_length=8192)]


class ListChatsData(_Data):
    limit: Annotated[int, Field(ge=1, le=100)] = 50


class EmptyData(_Data):
    pass


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    requestId: RequestId | None = None


class JoinChat(_Frame):
    type: Literal["join_chat"]
    data: JoinChatData


class SwitchChat(_Frame):
    type: Literal["switch_chat"]
    data: SwitchChatData


class CreateChat(_Frame):
    type: Literal["create_chat"]
    data: CreateChatData


class SendMessage(_Frame):
    type: Literal["send_message"]
    data: SendMessageData


class Cancel(_Frame):
    type: Literal["cancel"]
    data: CancelData = CancelData()


class RefreshToken(_Frame):
    type: Literal["refresh_token"]
    data: RefreshTokenData


class ListChats(_Frame):
    type: Literal["list_chats"]
    data: ListChatsData = ListChatsData()


class Ping(_Frame):
    type: Literal["ping"]
    data: EmptyData = EmptyData()


ClientFrame = Annotated[
    JoinChat | SwitchChat | CreateChat | SendMessage | Cancel | RefreshToken | ListChats | Ping,
    Field(discriminator="type"),
]
_client_frame: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


def parse_client_frame(raw: str | bytes) -> ClientFrame:
    """Parse one client frame or raise ``ChatError(INVALID_MESSAGE)`` saying what is wrong."""
    try:
        return _client_frame.validate_json(raw)
    except ValidationError as exc:
        raise ChatError(ErrorCode.INVALID_MESSAGE, _describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    if first["type"] == "json_invalid":
        return "Invalid message: not valid JSON"
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return "Invalid message: a frame must be a JSON object"
    if first["type"] == "union_tag_invalid":
        return "Invalid message: unknown type"
    if first["type"] == "union_tag_not_found":
        return "Invalid message: missing type"
    where = ".".join(str(part) for part in first["loc"][1:] if part != "type") or "frame"
    return f"Invalid message: {where}: {first['msg']}"


def peek_request_id(raw: str | bytes) -> str | int | None:
    """Best-effort ``requestId`` of a frame that failed to parse, so the error can echo it."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict):
        rid = value.get("requestId")
        if isinstance(rid, int) and not isinstance(rid, bool) and -(2**63) <= rid < 2**63:
            return rid
        if isinstance(rid, str) and len(rid) <= 128:
            return rid
    return None


def iso_utc(moment: datetime) -> str:
    """``2024-01-01T00:00:00.000Z``, the timestamp shape of SPEC §4."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
