"""An OpenAI-compatible fake server for tests and benchmarks, spoken to over real HTTP.

Serves ``POST /v1/chat/completions`` (streaming and not) the way the real API does, so the real
``openai`` SDK is exercised end to end. The answer echoes the last user message, so a test can tell
whose answer it is. Pacing comes from the environment (``FAKE_OPENAI_FIRST_TOKEN_MS``,
``FAKE_OPENAI_TOKENS_PER_SECOND``, ``FAKE_OPENAI_ANSWER_TOKENS``); a user message may steer one
answer with markers: ``[[fail:500]]`` answers that status, ``[[slow:MS]]`` waits MS between tokens,
``[[tokens:N]]`` makes the answer N tokens long, ``[[poison]]`` streams deltas a store refuses (NUL,
lone surrogates, a surrogate pair split across two chunks; ``POISON_TOKENS``, cleaned ``POISON_CLEAN``).

``GET /_requests`` lists the request bodies received; ``DELETE /_requests`` clears them.
``GET /_streams`` lists the streamed answers: ``question``, tokens ``sent`` of ``total``, ``state``
(``open``, ``done``, or ``aborted`` when the client closed the stream early), ``ended`` (epoch s).

Run: ``python -m tests.support.fake_openai --port 8099``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

received: list[dict[str, Any]] = []
streams: list[dict[str, Any]] = []

FIRST_TOKEN_MS = int(os.environ.get("FAKE_OPENAI_FIRST_TOKEN_MS", "0"))
TOKENS_PER_SECOND = float(os.environ.get("FAKE_OPENAI_TOKENS_PER_SECOND", "0"))
ANSWER_TOKENS = int(os.environ.get("FAKE_OPENAI_ANSWER_TOKENS", "20"))


# placeholders swapped for JSON escapes after encoding: orjson refuses to encode lone surrogates
_ESCAPES = {b"@@HI@@": b"\\ud83d", b"@@LO@@": b"\\ude00", b"@@LONE@@": b"\\ud800", b"@@LOW@@": b"\\udc00"}
POISON_TOKENS = ["Regarding", " nul\x00byte", " lone@@LONE@@x", " low@@LOW@@y", " pair@@HI@@", "@@LO@@end"]
POISON_CLEAN = "Regarding nulbyte lone\ufffdx low\ufffdy pair\U0001f600end"
"""what the worker must make of ``POISON_TOKENS``: NUL dropped, lone surrogates U+FFFD, the pair joined."""


def _marker(text: str, name: str) -> int | None:
    match = re.search(rf"\[\[{name}:(\d+)\]\]", text)
    return int(match.group(1)) if match else None


def _answer_tokens(question: str, count: int) -> list[str]:
    words = ["Regarding", f"«{question[:60]}»:"] + [f"point{i}" for i in range(1, count + 1)]
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return tokens[:count]


def _chunk(completion_id: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    encoded = orjson.dumps(body)
    for placeholder, escape in _ESCAPES.items():
        encoded = encoded.replace(placeholder, escape)
    return b"data: " + encoded + b"\n\n"


async def completions(request: Request) -> Response:
    body = await request.json()
    received.append(body)
    messages = body.get("messages", [])
    question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    status = _marker(question, "fail")
    if status:
        return JSONResponse({"error": {"message": "injected failure", "type": "server_error"}}, status_code=status)
    wanted = _marker(question, "tokens") or ANSWER_TOKENS
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or wanted
    count = min(wanted, int(max_tokens))
    tokens = POISON_TOKENS[:count] if "[[poison]]" in question else _answer_tokens(question, count)
    finish = "length" if count < wanted else "stop"
    slow_ms = _marker(question, "slow")
    interval = slow_ms / 1000 if slow_ms is not None else (1 / TOKENS_PER_SECOND if TOKENS_PER_SECOND else 0)
    model = body.get("model", "fake")
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
    usage = {
        "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in messages),
        "completion_tokens": len(tokens),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]

    if not body.get("stream"):
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        )

    record: dict[str, Any] = {"question": question, "sent": 0, "total": len(tokens), "state": "open", "ended": None}
    streams.append(record)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for part in _stream():
                yield part
        except BaseException:
            record["state"] = "aborted"
            raise
        else:
            record["state"] = "done"
        finally:
            record["ended"] = time.time()

    async def _stream() -> AsyncIterator[bytes]:
        if FIRST_TOKEN_MS:
            await asyncio.sleep(FIRST_TOKEN_MS / 1000)
        yield _chunk(completion_id, model, {"role": "assistant", "content": ""}, None)
        start = time.monotonic()
        for index, token in enumerate(tokens):
            if interval:
                delay = start + index * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield _chunk(completion_id, model, {"content": token}, None)
            record["sent"] = index + 1
        yield _chunk(completion_id, model, {}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            final = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield b"data: " + orjson.dumps(final) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def list_requests(request: Request) -> Response:
    if request.method == "DELETE":
        received.clear()
        return JSONResponse({"cleared": True})
    return JSONResponse(received)


async def list_streams(request: Request) -> Response:
    return JSONResponse(streams)


app = Starlette(
    routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/_streams", list_streams, methods=["GET"]),
        Route("/_requests", list_requests, methods=["GET", "DELETE"]),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", loop="uvloop")


if __name__ == "__main__":
    main()
