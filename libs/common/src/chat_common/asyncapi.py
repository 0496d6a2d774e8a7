"""Generate the AsyncAPI 3 document of the WebSocket protocol from the frame models.

    uv run python -m chat_common.asyncapi docs/asyncapi.json     # write it
    uv run python -m chat_common.asyncapi --check docs/asyncapi.json   # exit 1 if it is stale

The document is checked in; ``tests/client/test_protocol_document.py`` fails when it and the models
disagree. Operations are seen from the gateway: it *receives* client frames and *sends* server frames.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from chat_common import frames, server_frames

CLIENT_FRAMES: tuple[type[BaseModel], ...] = (
    frames.JoinChat,
    frames.SwitchChat,
    frames.CreateChat,
    frames.SendMessage,
    frames.Cancel,
    frames.RefreshToken,
    frames.ListChats,
    frames.Ping,
)

SUMMARIES: dict[str, str] = {
    "join_chat": "Authenticate the connection and open a chat (the given one, or a new one without chatId). "
    "Must be the first frame. With messageId and lastSeq, asks to resume an answer after a reconnect.",
    "switch_chat": "Move this connection to another of the user's chats.",
    "create_chat": "Create a new chat and move this connection to it.",
    "send_message": "A user message; the assistant's answer streams back.",
    "cancel": "Stop the answer being generated (the given one, or all of this connection's).",
    "refresh_token": "Replace the connection's token before it expires (same user).",
    "list_chats": "The user's chats, most recently used first.",
    "ping": "Application-level keepalive.",
    "chat_joined": "The chat is open; its recent history, oldest first.",
    "chat_created": "The new chat is open.",
    "chat_switched": "The other chat is open; its recent history.",
    "chats": "The user's chats.",
    "message_accepted": "The user message is stored; its answer follows.",
    "response_start": "The assistant starts answering.",
    "response_chunk": "Part of the answer, in order (chunks may be coalesced).",
    "response_end": "The answer is complete (or cancelled, or cut at the token limit).",
    "error": "A request failed; SERVER_AT_CAPACITY, TOO_MANY_CONNECTIONS, UNAUTHORIZED and "
    "PAYLOAD_TOO_LARGE then close the connection (1013, 1008, 1008, 1009), the other codes leave it open.",
    "pong": "Answer to ping.",
    "token_refreshed": "The new token is in force.",
}

# client frame -> the frames that answer it directly (with its requestId)
REPLIES: dict[str, list[str]] = {
    "join_chat": ["chat_joined", "error"],
    "switch_chat": ["chat_switched", "error"],
    "create_chat": ["chat_created", "error"],
    "send_message": ["message_accepted", "error"],
    "refresh_token": ["token_refreshed", "error"],
    "list_chats": ["chats", "error"],
    "ping": ["pong"],
}


def frame_type(model: type[BaseModel]) -> str:
    (value,) = get_args(model.model_fields["type"].annotation)
    return str(value)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_CHANNEL_REF = {"$ref": "#/channels/chat"}


def _message_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/channels/chat/messages/{name}"}


def _messages(keys: dict[Any, Any], models: list[type[Any]]) -> dict[str, Any]:
    return {
        frame_type(model): {
            "name": frame_type(model),
            "title": frame_type(model),
            "summary": SUMMARIES[frame_type(model)],
            "contentType": "application/json",
            "payload": keys[(model, "validation")],
        }
        for model in models
    }


def _operations() -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for model in CLIENT_FRAMES:
        name = frame_type(model)
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": _CHANNEL_REF,
            "summary": SUMMARIES[name],
            "messages": [_message_ref(name)],
        }
        if name in REPLIES:
            operation["reply"] = {"channel": _CHANNEL_REF, "messages": [_message_ref(r) for r in REPLIES[name]]}
        operations[_camel(name)] = operation
    operations["streamAnswer"] = {
        "action": "send",
        "channel": _CHANNEL_REF,
        "summary": "After message_accepted: response_start, response_chunk..., then response_end or error "
        "(matched to the question by messageId/userMessageId, not requestId).",
        "messages": [_message_ref(n) for n in ("response_start", "response_chunk", "response_end", "error")],
    }
    operations["closeWithError"] = {
        "action": "send",
        "channel": _CHANNEL_REF,
        "summary": "An error the gateway sends on its own: token expired, server shutting down, too slow a reader.",
        "messages": [_message_ref("error")],
    }
    return operations


def build_document() -> dict[str, Any]:
    models = [*CLIENT_FRAMES, *server_frames.SERVER_FRAMES]
    keys, schemas = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    messages = _messages(keys, models)
    operations = _operations()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Chat gateway WebSocket protocol",
            "version": "1.0.0",
            "description": "Every frame is a JSON text frame {type, data, requestId?}; the server echoes "
            "requestId on the direct answer to a frame. Generated from chat_common.frames and "
            "chat_common.server_frames by `python -m chat_common.asyncapi`; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:3000",
                "protocol": "ws",
                "description": "scripts/run.sh; in production wss through the load balancer",
            }
        },
        "channels": {
            "chat": {
                "address": "/ws/chat",
                "title": "One chat connection",
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
            }
        },
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas["$defs"]},
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the AsyncAPI document of the protocol.")
    parser.add_argument("path", type=Path, nargs="?", default=Path("docs/asyncapi.json"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the models")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is stale: run python -m chat_common.asyncapi {args.path}", file=sys.stderr)
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
