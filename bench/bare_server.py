"""The baseline: a bare FastAPI/uvicorn WebSocket endpoint with the gateway's uvicorn options.

It speaks just enough of the protocol for ``chat-loadtest`` to drive it: ``join_chat`` is answered
with ``chat_joined`` at once (no token check, no database), ``send_message`` calls the same fake
model the worker uses (``FAKE_LLM_*``), coalesced the same way (``CHUNK_COALESCE_*``), directly in
the endpoint, with no broker, no database, no limits. What the gateway costs on top is the difference.

Run: ``python -m bench.bare_server --port 3420``.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from chat_common.process import raise_nofile_limit
from chat_common.settings import Settings, load_settings
from llm_worker.coalesce import Coalescer
from llm_worker.providers import Delta, FakeProvider, PromptMessage


def frame(kind: str, data: dict[str, Any], request_id: Any = None) -> str:
    body: dict[str, Any] = {"type": kind, "data": data}
    if request_id is not None:
        body["requestId"] = request_id
    return orjson.dumps(body).decode()


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None)
    model = FakeProvider(settings)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "healthy"})

    @app.websocket("/ws/chat")
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        chat_id = uuid.uuid4().hex
        try:
            while True:
                message = orjson.loads(await websocket.receive_text())
                if message.get("type") == "join_chat":
                    data = message.get("data", {})
                    await websocket.send_text(
                        frame(
                            "chat_joined",
                            {"chatId": chat_id, "chatType": data.get("chatType"), "history": []},
                            message.get("requestId"),
                        )
                    )
                elif message.get("type") == "send_message":
                    content = str(message["data"]["content"])
                    await answer(websocket, model, settings, chat_id, content, message.get("requestId"))
        except WebSocketDisconnect:
            return

    return app


async def answer(
    websocket: WebSocket, model: FakeProvider, settings: Settings, chat_id: str, content: str, request_id: Any
) -> None:
    message_id = uuid.uuid4().hex
    accepted = {"messageId": uuid.uuid4().hex, "chatId": chat_id}
    await websocket.send_text(frame("message_accepted", accepted, request_id))
    await websocket.send_text(frame("response_start", {"messageId": message_id, "chatId": chat_id}))
    coalescer = Coalescer(interval_ms=settings.chunk_coalesce_ms, max_chars=settings.chunk_coalesce_chars)
    parts: list[str] = []
    seq = 1

    async def chunk(text: str) -> None:
        nonlocal seq
        await websocket.send_text(frame("response_chunk", {"messageId": message_id, "delta": text, "seq": seq}))
        seq += 1

    async for event in model.stream([PromptMessage("user", content)], max_tokens=settings.ws_max_tokens):
        if isinstance(event, Delta):
            parts.append(event.text)
            ready = coalescer.add(event.text)
            if ready is not None:
                await chunk(ready)
    rest = coalescer.flush()
    if rest is not None:
        await chunk(rest)
    await websocket.send_text(
        frame("response_end", {"messageId": message_id, "content": "".join(parts), "finishReason": "stop"})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="bare FastAPI/uvicorn WebSocket baseline")
    parser.add_argument("--port", type=int, default=3420)
    args = parser.parse_args()
    settings = load_settings()
    raise_nofile_limit()
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        ws="websockets-sansio",
        ws_max_size=settings.ws_max_payload,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        backlog=4096,
        log_config=None,
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
