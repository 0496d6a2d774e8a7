"""docs/asyncapi.json matches the frame models, and the frames a real conversation produces match both."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from chat_common import asyncapi, server_frames
from chat_common.frames import ClientFrame
from chat_common.server_frames import server_frame_adapter
from tests.support.client import ChatClient, make_token
from tests.support.processes import ROOT, ServiceProcess

DOCUMENT = ROOT / "docs" / "asyncapi.json"


def test_checked_in_document_is_generated_from_the_models() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == asyncapi.render(), (
        "docs/asyncapi.json is stale: run `uv run python -m chat_common.asyncapi docs/asyncapi.json`"
    )
    assert asyncapi.main(["--check", str(DOCUMENT)]) == 0


def test_check_mode_detects_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "asyncapi.json"
    stale.write_text(asyncapi.render().replace('"response_chunk"', '"response_piece"'), encoding="utf-8")
    assert asyncapi.main(["--check", str(stale)]) == 1


def test_document_covers_every_frame_and_its_references_resolve() -> None:
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert document["asyncapi"].startswith("3.")
    client_types = {asyncapi.frame_type(m) for m in asyncapi.CLIENT_FRAMES}
    assert client_types == {m.model_fields["type"].annotation.__args__[0] for m in ClientFrame.__origin__.__args__}  # type: ignore[attr-defined]
    server_types = {asyncapi.frame_type(m) for m in server_frames.SERVER_FRAMES}
    assert set(document["components"]["messages"]) == client_types | server_types
    assert set(document["channels"]["chat"]["messages"]) == client_types | server_types

    def resolve(ref: str) -> Any:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def walk(node: Any) -> int:
        count = 0
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(node["$ref"])
                count += 1
            count += sum(walk(value) for value in node.values())
        elif isinstance(node, list):
            count += sum(walk(value) for value in node)
        return count

    assert walk(document) > 50


def _validator(document: dict[str, Any], frame_type: str) -> jsonschema.Draft202012Validator:
    """Validates a frame against the payload schema of one message, references resolved in the document."""
    payload = document["components"]["messages"][frame_type]["payload"]
    return jsonschema.Draft202012Validator({**document, "$ref": payload["$ref"]})


async def test_real_frames_match_the_models_and_the_document(gateway: ServiceProcess) -> None:
    """Every frame type the server sends, produced by the running stack, validated both ways."""
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    user = f"doc-{uuid.uuid4().hex[:8]}"
    received: list[dict[str, Any]] = []
    async with await ChatClient.connect(gateway.extra["ws_url"]) as client:
        received.append(await client.join(make_token(user), "messages"))
        answer = await client.ask("[[tokens:6]] hello")
        received.extend(answer.frames)
        sent: list[tuple[str, dict[str, Any]]] = [
            ("create_chat", {"chatType": "documents"}),
            ("switch_chat", {"chatId": received[0]["data"]["chatId"], "chatType": "messages"}),
            ("list_chats", {}),
            ("ping", {}),
            ("refresh_token", {"token": make_token(user)}),
            ("switch_chat", {"chatId": str(uuid.uuid4()), "chatType": "messages"}),
        ]
        for n, (kind, data) in enumerate(sent):
            await client.send(kind, data, requestId=f"r{n}")
            reply = await client.recv()
            assert reply.get("requestId") == f"r{n}"
            received.append(reply)
        await client.send("send_message", {"content": "x" * 5000})
        received.append(await client.recv())
        await client.send("send_message", {"content": "[[slow:80]] [[tokens:100]] long"})
        accepted = await client.recv_type("message_accepted")
        await client.send("cancel", {"messageId": accepted["data"]["messageId"]})
        received.append(accepted)
        received.extend((await client.collect()).frames)

    assert {frame["type"] for frame in received} == {asyncapi.frame_type(m) for m in server_frames.SERVER_FRAMES}
    for frame in received:
        server_frame_adapter.validate_python(frame)
        _validator(document, frame["type"]).validate(frame)


def test_the_document_rejects_what_the_protocol_does_not_allow() -> None:
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    with pytest.raises(jsonschema.ValidationError):
        _validator(document, "response_chunk").validate({"type": "response_chunk", "data": {"messageId": "m"}})
    with pytest.raises(jsonschema.ValidationError):
        _validator(document, "error").validate({"type": "error", "data": {"code": "NOPE", "message": "x"}})
    with pytest.raises(jsonschema.ValidationError):
        _validator(document, "join_chat").validate({"type": "join_chat", "data": {"chatType": "documents"}})
    _validator(document, "join_chat").validate(
        {"type": "join_chat", "data": {"token": "t", "chatType": "documents", "chatId": "c"}}
    )
