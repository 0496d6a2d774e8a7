"""One simulated client connection: open, join a chat, ask questions and check every answer.

An answer is *complete* when its chunks arrive in sequence order (1, 2, ...) under one message id and
their deltas add up to exactly the ``content`` of ``response_end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass

from chat_loadtest.connection import ConnectionLost, FrameConnection
from chat_loadtest.stats import Recorder

_questions = itertools.count()

QUESTIONS = (
    "What must a valid contract contain?",
    "Can my landlord keep the deposit for ordinary wear and tear?",
    "Review the termination clause of my employment contract.",
    "How long is the limitation period for an unpaid invoice?",
    "Draft a short notice of withdrawal from a purchase contract.",
)


@dataclass(slots=True)
class Outcome:
    """How one ``send_message`` ended: ``answered``, ``incomplete``, an error code, or ``lost``."""

    kind: str
    retry_after_ms: int | None = None


class SimConnection:
    def __init__(self, url: str, token: str, chat_type: str, recorder: Recorder, *, answer_timeout: float) -> None:
        self.url = url
        self.token = token
        self.chat_type = chat_type
        self.recorder = recorder
        self.answer_timeout = answer_timeout
        self.conn: FrameConnection | None = None
        self.busy = False
        self.alive = False

    async def open_and_join(self, *, join_timeout: float) -> bool:
        """Open the socket and join a new chat; counts the outcome. ``True`` when joined."""
        rec = self.recorder
        started = time.monotonic()
        try:
            self.conn = await FrameConnection.open(self.url, open_timeout=join_timeout)
        except ConnectionLost as exc:
            rec.connections_refused[exc.reason] += 1
            return False
        rec.connections_opened += 1
        try:
            await self.conn.send({"type": "join_chat", "data": {"token": self.token, "chatType": self.chat_type}})
            async with asyncio.timeout(join_timeout):
                frame = await self.conn.recv()
        except (ConnectionLost, TimeoutError) as exc:
            rec.connections_refused[getattr(exc, "reason", "join timeout")] += 1
            await self.close()
            return False
        if frame.get("type") != "chat_joined":
            rec.connections_refused[str(frame.get("data", {}).get("code", frame.get("type")))] += 1
            await self.close()
            return False
        rec.connections_joined += 1
        rec.join_ms.append((time.monotonic() - started) * 1000)
        self.alive = True
        return True

    async def ask(self) -> Outcome:
        """Send one question and follow its answer to the end; records timings and the outcome."""
        assert self.conn is not None
        rec = self.recorder
        self.busy = True
        number = next(_questions)
        sent = time.monotonic()
        rec.sent += 1
        try:
            await self.conn.send(
                {"type": "send_message", "data": {"content": f"{QUESTIONS[number % len(QUESTIONS)]} (#{number})"}}
            )
            async with asyncio.timeout(self.answer_timeout):
                outcome = await self._follow(sent)
        except TimeoutError:
            rec.errors["CLIENT_TIMEOUT"] += 1
            outcome = Outcome("CLIENT_TIMEOUT")
        except ConnectionLost as exc:
            rec.errors["CONNECTION_LOST"] += 1
            rec.connections_lost[exc.reason] += 1
            self.alive = False
            outcome = Outcome("lost")
        except asyncio.CancelledError:
            rec.unfinished += 1
            raise
        finally:
            self.busy = False
        return outcome

    async def _follow(self, sent: float) -> Outcome:
        assert self.conn is not None
        rec = self.recorder
        message_id: str | None = None
        parts: list[str] = []
        next_seq = 1
        in_order = True
        while True:
            frame = await self.conn.recv()
            kind, data = frame.get("type"), frame.get("data") or {}
            elapsed = (time.monotonic() - sent) * 1000
            if kind == "message_accepted":
                rec.accepted_ms.append(elapsed)
            elif kind == "response_start":
                message_id = data.get("messageId")
            elif kind == "response_chunk" and data.get("messageId") == message_id:
                if not parts:
                    rec.first_chunk_ms.append(elapsed)
                in_order = in_order and data.get("seq") == next_seq
                next_seq += 1
                parts.append(str(data.get("delta", "")))
                rec.chunks += 1
            elif kind == "response_end" and data.get("messageId") == message_id:
                rec.end_ms.append(elapsed)
                whole = "".join(parts) == data.get("content")
                if in_order and whole and data.get("finishReason") != "cancelled":
                    rec.answered += 1
                    return Outcome("answered")
                rec.incomplete += 1
                return Outcome("incomplete")
            elif kind == "error":
                code = str(data.get("code", "UNKNOWN"))
                rec.errors[code] += 1
                retry = data.get("retryAfterMs")
                return Outcome(code, retry if isinstance(retry, int) else None)

    async def close(self) -> None:
        self.alive = False
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a socket that is already gone
                await self.conn.close()
            self.conn = None
