"""Hold a short conversation with the gateway: join a chat, ask, print the streamed answer.

    uv run python examples/client.py "What must a valid contract contain?"

Environment: GATEWAY_URL (default ws://localhost:3000/ws/chat), CHAT_TOKEN (default: a development
token signed with JWT_SECRET, as scripts/run.sh sets it), CHAT_TYPE (messages or documents).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import jwt
import websockets


async def main(question: str) -> None:
    url = os.environ.get("GATEWAY_URL", "ws://localhost:3000/ws/chat")
    secret = os.environ.get("JWT_SECRET", "dev-secret-change-me-in-production-0123456789")
    token = os.environ.get("CHAT_TOKEN") or jwt.encode(
        {"sub": "demo-user", "exp": int(time.time()) + 3600}, secret, algorithm="HS256"
    )
    async with websockets.connect(url, compression=None) as ws:
        chat_type = os.environ.get("CHAT_TYPE", "messages")
        await ws.send(json.dumps({"type": "join_chat", "data": {"token": token, "chatType": chat_type}}))
        joined = json.loads(await ws.recv())
        if joined["type"] == "error":
            raise SystemExit(f"join failed: {joined['data']}")
        print(f"joined {chat_type} chat {joined['data']['chatId']}", file=sys.stderr)
        await ws.send(json.dumps({"type": "send_message", "data": {"content": question}}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "response_chunk":
                print(frame["data"]["delta"], end="", flush=True)
            elif frame["type"] == "response_end":
                print(f"\n[{frame['data']['finishReason']}, usage {frame['data']['usage']}]", file=sys.stderr)
                return
            elif frame["type"] == "error":
                raise SystemExit(f"error: {frame['data']}")


if __name__ == "__main__":
    asyncio.run(main(" ".join(sys.argv[1:]) or "What must a valid contract contain?"))
