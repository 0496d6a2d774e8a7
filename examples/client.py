"""Hold a short conversation with the gateway through the Python client library (``chat_client``).

    uv run python examples/client.py "What must a valid contract contain?"

Environment: GATEWAY_URL (default ws://localhost:3000/ws/chat), CHAT_TOKEN (default: development
tokens signed with JWT_SECRET, as scripts/run.sh sets it, renewed before they expire), CHAT_TYPE
(messages or documents), CHAT_ID (an existing chat to continue).

The client reconnects by itself (try restarting the gateway while an answer streams) and raises
typed errors: ``RateLimited.retry_after`` says how long to wait.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import jwt

from chat_client import AnswerChunk, AnswerEnd, ChatClient, RateLimited, ServerError


def token_provider() -> str:
    """A fresh development token each call; a real application asks its identity provider."""
    if token := os.environ.get("CHAT_TOKEN"):
        return token
    secret = os.environ.get("JWT_SECRET", "dev-secret-change-me-in-production-0123456789")
    return jwt.encode({"sub": "demo-user", "exp": int(time.time()) + 3600}, secret, algorithm="HS256")


async def main(question: str) -> int:
    url = os.environ.get("GATEWAY_URL", "ws://localhost:3000/ws/chat")
    chat_type = "documents" if os.environ.get("CHAT_TYPE") == "documents" else "messages"
    try:
        client = await ChatClient.connect(url, token_provider, chat_type=chat_type, chat_id=os.environ.get("CHAT_ID"))
    except ServerError as exc:
        print(f"could not join: {exc}", file=sys.stderr)
        return 1
    async with client:
        print(f"joined {client.chat_type} chat {client.chat_id} as {client.user_id}", file=sys.stderr)
        try:
            answer = await client.send(question)
        except RateLimited as exc:
            print(f"rate limited: try again in {exc.retry_after:.0f} s", file=sys.stderr)
            return 2
        async for event in answer:
            if isinstance(event, AnswerChunk):
                print(event.delta, end="", flush=True)
            elif isinstance(event, AnswerEnd):
                print(f"\n[{event.finish_reason}, usage {event.usage}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(" ".join(sys.argv[1:]) or "What must a valid contract contain?")))
