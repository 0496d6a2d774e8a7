"""A small test client over a real WebSocket: tokens, frames, and collecting a streamed answer."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import websockets
from websockets.asyncio.client import ClientConnection

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256"


def make_token(
    user_id: str,
    *,
    secret: str = TEST_SECRET,
    expires_in: float = 600,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    payload = {"sub": user_id, "exp": int(time.time() + expires_in), **claims}
    return jwt.encode(payload, secret, algorithm=algorithm)


@dataclass
class Answer:
    accepted: dict[str, Any] | None = None
    start: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(chunk["delta"] for chunk in self.chunks)


class ChatClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> ChatClient:
        ws = await websockets.connect(url, max_size=2**22, compression=None, open_timeout=10, **kwargs)
        return cls(ws)

    async def send(self, frame_type: str, data: dict[str, Any] | None = None, **extra: Any) -> None:
        frame: dict[str, Any] = {"type": frame_type, **extra}
        if data is not None:
            frame["data"] = data
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        return json.loads(raw)

    async def recv_type(self, *types: str, timeout: float = 10) -> dict[str, Any]:
        """The next frame of one of ``types``, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] in types:
                return frame

    async def join(self, token: str, chat_type: str = "messages", chat_id: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"token": token, "chatType": chat_type}
        if chat_id is not None:
            data["chatId"] = chat_id
        await self.send("join_chat", data)
        return await self.recv()

    async def ask(self, content: str, timeout: float = 20) -> Answer:
        await self.send("send_message", {"content": content})
        return await self.collect(timeout=timeout)

    async def collect(self, timeout: float = 20) -> Answer:
        """Frames of one answer, from ``message_accepted`` to ``response_end`` or an error."""
        answer = Answer()
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            answer.frames.append(frame)
            kind, data = frame["type"], frame.get("data", {})
            if kind == "message_accepted":
                answer.accepted = data
            elif kind == "response_start":
                answer.start = data
            elif kind == "response_chunk":
                answer.chunks.append(data)
            elif kind == "response_end":
                answer.end = data
                return answer
            elif kind == "error":
                answer.error = data
                return answer

    async def close(self) -> None:
        await self.ws.close()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
