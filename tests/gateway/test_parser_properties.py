"""Properties of the edge of the protocol: whatever arrives, the parser answers with a frame or
``INVALID_MESSAGE``, never anything else; normalisation is total and idempotent."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import CHAT_TYPES, parse_client_frame, peek_request_id
from chat_common.server_frames import error_frame, pong_frame
from chat_gateway.messages import normalise_content

FRAME_TYPES = ["join_chat", "switch_chat", "create_chat", "send_message", "cancel", "refresh_token", "ping"]
KEYS = ["token", "chatType", "chatId", "content", "messageId", "lastSeq", "requestId", "type", "data"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50)
json_values = st.recursive(
    json_scalars | st.sampled_from([*CHAT_TYPES, *FRAME_TYPES]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=15,
)

# frames close to valid ones: a known type, data with the right keys and arbitrary values
near_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(FRAME_TYPES)},
    optional={
        "data": st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5) | json_values,
        "requestId": st.integers() | st.text(max_size=200) | json_values,
    },
)


def parse_or_refuse(raw: str | bytes) -> Any:
    refused: ChatError | None = None
    try:
        frame = parse_client_frame(raw)
    except ChatError as error:
        refused = error
    if refused is not None:
        assert refused.code is ErrorCode.INVALID_MESSAGE
        assert refused.close_code is None
        assert refused.message.startswith("Invalid message")
        assert len(refused.message) < 300
        json.loads(error_frame(refused))
        return None
    assert frame.type in FRAME_TYPES
    json.loads(pong_frame(frame.requestId))  # whatever parses can be echoed
    return frame


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    parse_or_refuse(raw)
    json.loads(error_frame(ChatError(ErrorCode.INVALID_MESSAGE), peek_request_id(raw)))


@settings(max_examples=400)
@given(st.text(max_size=300))
def test_arbitrary_text(raw: str) -> None:
    parse_or_refuse(raw)
    json.loads(error_frame(ChatError(ErrorCode.INVALID_MESSAGE), peek_request_id(raw)))


@settings(max_examples=200)
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    raw = json.dumps(value).encode()  # the standard library's: integers of any size
    parse_or_refuse(raw)
    parse_or_refuse(raw.decode())


@settings(max_examples=200)
@given(near_frames, st.data())
def test_near_valid_frames_and_their_truncations(value: dict[str, Any], data: st.DataObject) -> None:
    raw = json.dumps(value).encode()
    frame = parse_or_refuse(raw)
    if frame is not None:
        # what parses is typed as the spec says
        assert frame.type == value["type"]
        rid = value.get("requestId")
        assert frame.requestId == rid or rid is None or isinstance(rid, bool | float)
    cut = data.draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))
    parse_or_refuse(raw[:cut])
    request_id = peek_request_id(raw)
    assert request_id is None or isinstance(request_id, str | int)
    json.loads(error_frame(ChatError(ErrorCode.INVALID_MESSAGE), request_id))


@settings(max_examples=300)
@given(st.integers(min_value=-(2**64), max_value=2**64) | st.sampled_from([2**63, -(2**63) - 1, 2**63 - 1, -(2**63)]))
def test_an_invalid_frame_with_any_integer_request_id_gets_a_valid_error(rid: int) -> None:
    # the error of a frame that did not parse echoes its requestId only where the spec's range holds it
    raw = '{"type":"nope","requestId":' + str(rid) + "}"
    request_id = peek_request_id(raw)
    assert request_id == (rid if -(2**63) <= rid < 2**63 else None)
    echoed = json.loads(error_frame(ChatError(ErrorCode.INVALID_MESSAGE), request_id))
    assert echoed.get("requestId") == request_id


@given(st.integers(min_value=1, max_value=5000))
def test_deep_nesting(depth: int) -> None:
    parse_or_refuse("[" * depth + "]" * depth)
    parse_or_refuse('{"type":"ping","data":' + '{"a":' * depth + "1" + "}" * depth + "}")
    peek_request_id('{"requestId":' + "[" * depth)


@settings(max_examples=400)
@given(st.text())
def test_normalised_content_has_no_control_characters_and_is_stable(text: str) -> None:
    clean = normalise_content(text)
    assert all(ch in "\n\t" or unicodedata.category(ch) != "Cc" for ch in clean)
    assert unicodedata.is_normalized("NFC", clean)
    assert normalise_content(clean) == clean


@settings(max_examples=300)
@given(st.sampled_from(["ping", "cancel"]), st.integers() | st.text(max_size=300) | json_values)
def test_any_request_id_is_echoed_or_refused(frame_type: str, request_id: Any) -> None:
    frame = parse_or_refuse(json.dumps({"type": frame_type, "requestId": request_id}))
    if frame is not None:
        assert frame.requestId == request_id
