from __future__ import annotations

import json

import pytest

from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import (
    CreateChat,
    JoinChat,
    SendMessage,
    SwitchChat,
    parse_client_frame,
)
from chat_common.server_frames import error_frame


def test_the_original_documents_examples_parse() -> None:
    join = parse_client_frame(
        '{"type":"join_chat","data":{"token":"your-jwt-token","chatType":"documents","chatId":"optional-existing-chat-id"}}'
    )
    assert isinstance(join, JoinChat)
    assert join.data.chatId == "optional-existing-chat-id"
    switch = parse_client_frame('{"type":"switch_chat","data":{"chatId":"new-chat-id","chatType":"messages"}}')
    assert isinstance(switch, SwitchChat)
    assert isinstance(parse_client_frame('{"type":"create_chat","data":{"chatType":"documents"}}'), CreateChat)


def test_request_id_and_unknown_fields() -> None:
    frame = parse_client_frame('{"type":"send_message","data":{"content":"hi","extra":1},"requestId":"r1"}')
    assert isinstance(frame, SendMessage)
    assert frame.requestId == "r1"


@pytest.mark.parametrize(
    ("raw", "hint"),
    [
        ("{", "JSON"),
        ("[]", "object"),
        ("null", "object"),
        ('{"type":"nope","data":{}}', "unknown type"),
        ('{"data":{}}', "missing type"),
        ('{"type":"send_message","data":{"content":1}}', "content"),
        ('{"type":"join_chat","data":{"chatType":"documents"}}', "token"),
        ('{"type":"create_chat","data":{"chatType":"other"}}', "chatType"),
        ('{"type":"switch_chat","data":{"chatId":"' + "x" * 200 + '","chatType":"messages"}}', "chatId"),
    ],
)
def test_invalid_frames_are_invalid_message(raw: str, hint: str) -> None:
    with pytest.raises(ChatError) as raised:
        parse_client_frame(raw)
    assert raised.value.code is ErrorCode.INVALID_MESSAGE
    assert hint.lower() in raised.value.message.lower()


def test_error_frame_shape() -> None:
    error = ChatError(ErrorCode.RATE_LIMITED, retry_after_ms=1500)
    frame = json.loads(error_frame(error, "r2"))
    assert frame == {
        "type": "error",
        "data": {"code": "RATE_LIMITED", "message": "Rate limit exceeded", "retryAfterMs": 1500},
        "requestId": "r2",
    }
    assert ChatError(ErrorCode.SERVER_AT_CAPACITY).message == "Server at capacity"
    assert ChatError(ErrorCode.TOO_MANY_CONNECTIONS).message == "Too many connections for user"
    assert ChatError(ErrorCode.SERVER_AT_CAPACITY).close_code == 1013
    assert ChatError(ErrorCode.PAYLOAD_TOO_LARGE).close_code == 1009
    assert ChatError(ErrorCode.BUSY).close_code is None


def test_every_server_frame_is_encoded_from_its_model_and_checked_against_it() -> None:
    from chat_common import server_frames

    assert server_frames.CHECK_FRAMES, "the test suite runs with CHAT_CHECK_FRAMES=1 (tests/conftest.py)"
    accepted = json.loads(server_frames.message_accepted_frame({"messageId": "m1", "chatId": "c1"}, "r1"))
    assert accepted == {"type": "message_accepted", "data": {"messageId": "m1", "chatId": "c1"}, "requestId": "r1"}
    with pytest.raises(ValueError, match="extra"):
        server_frames.message_accepted_frame({"messageId": "m1", "chatId": "c1", "extra": 1})
    with pytest.raises(ValueError, match="seq"):
        server_frames.response_chunk_frame({"messageId": "m1", "delta": "x"})
