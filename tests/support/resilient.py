"""A client that behaves as a well-written app does under faults, for the rolling-restart test and the
chaos run: it reconnects (to the next gateway) when its connection drops, rejoins its chat with the
answer it was reading and the last sequence number it saw, and finds finished answers in the history.

Every question it asks ends in one ``Outcome``: ``answered`` (``response_end`` seen, live or after a
resume, or the answer found in the history), ``failed`` with the error code, or ``unknown`` (nothing
conclusive before its deadline; the stored ledger decides).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus


@dataclass
class Outcome:
    question: str
    result: str = "unknown"
    """``answered``, ``failed``, ``unknown`` (or ``unsent`` when the socket never took it)."""
    code: str | None = None
    user_message_id: str | None = None
    answer_id: str | None = None
    content: str | None = None
    restarts: int = 0
    resumes: int = 0
    not_resumed: int = 0
    """times a resume was answered "Answer not resumed" (then looked up in the history)."""
    garbled: bool = False
    """chunks seen and the final content disagree (two attempts mixed, or a chunk lost)."""


@dataclass
class ResilientClient:
    urls: list[str]
    token: str
    chat_type: str = "messages"
    chat_id: str | None = None
    reconnects: int = 0
    ws: ClientConnection | None = None
    _next_url: int = 0
    closes: list[int] = field(default_factory=list)
    url: str | None = None
    """the gateway this client is connected to now."""

    async def _connect(self, *, deadline: float, resume: tuple[str, int, int] | None = None) -> list[dict[str, Any]]:
        """Connect to the next gateway that answers and (re)join the chat, naming the answer to resume
        (message id, last sequence number seen, the attempt it counts in) if any; return the joined
        history."""
        delay = 0.2
        while True:
            url = self.urls[self._next_url % len(self.urls)]
            self._next_url += 1
            try:
                self.ws = await websockets.connect(url, compression=None, open_timeout=5, max_size=2**22)
                data: dict[str, Any] = {"token": self.token, "chatType": self.chat_type}
                if self.chat_id is not None:
                    data["chatId"] = self.chat_id
                    if resume is not None:
                        data["messageId"] = resume[0]
                        if resume[1] >= 0:  # no chunk seen yet: the whole answer
                            data["lastSeq"] = resume[1]
                            if resume[2] > 1:
                                data["attempt"] = resume[2]
                await self.ws.send(json.dumps({"type": "join_chat", "data": data}))
                frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
                if frame["type"] == "chat_joined":
                    self.chat_id, self.url = frame["data"]["chatId"], url
                    return list(frame["data"]["history"])
            except (OSError, ConnectionClosed, InvalidHandshake, InvalidStatus, TimeoutError):
                pass
            await self._drop()
            if time.monotonic() > deadline:
                raise TimeoutError("no gateway would take the connection")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _drop(self) -> None:
        if self.ws is not None:
            ws, self.ws = self.ws, None
            with contextlib.suppress(OSError, ConnectionClosed, TimeoutError):
                await asyncio.wait_for(ws.close(), 2)

    async def start(self, *, timeout: float = 30) -> None:
        await self._connect(deadline=time.monotonic() + timeout)

    async def close(self) -> None:
        await self._drop()

    async def _rejoin(self, outcome: Outcome, last_seq: int, attempt: int, deadline: float) -> list[dict[str, Any]]:
        """Reconnect and rejoin, asking to resume the answer being read."""
        self.reconnects += 1
        await self._drop()
        resume = (outcome.answer_id, last_seq, attempt) if outcome.answer_id is not None else None
        history = await self._connect(deadline=deadline, resume=resume)
        if resume is not None:
            outcome.resumes += 1
        return history

    async def ask(self, text: str, *, timeout: float = 60) -> Outcome:
        """Send one question and follow it to its outcome across disconnects, within ``timeout``."""
        question = f"{text} #{uuid.uuid4().hex[:10]}"
        outcome = Outcome(question)
        deadline = time.monotonic() + timeout
        chunks: list[str] = []
        last_seq, attempt = -1, 1
        try:
            if self.ws is None:  # the previous connection closed between questions
                self.reconnects += 1
                await self._connect(deadline=deadline)
            assert self.ws is not None
            try:
                await self.ws.send(json.dumps({"type": "send_message", "data": {"content": question}}))
            except ConnectionClosed:
                outcome.result = "unsent"
                await self._drop()
                return outcome
            while time.monotonic() < deadline:
                try:
                    assert self.ws is not None
                    raw = await asyncio.wait_for(self.ws.recv(), max(0.1, deadline - time.monotonic()))
                except (ConnectionClosed, OSError) as closed:
                    if isinstance(closed, ConnectionClosed) and closed.rcvd is not None:
                        self.closes.append(closed.rcvd.code)
                    history = await self._rejoin(outcome, last_seq, attempt, deadline)
                    if self._settled_by_history(outcome, history):
                        return outcome
                    continue
                except TimeoutError:
                    break
                frame = json.loads(raw)
                kind, data = frame["type"], frame.get("data", {})
                if kind == "message_accepted":
                    outcome.user_message_id = data["messageId"]
                elif kind == "response_start":
                    if outcome.answer_id is not None and data["messageId"] != outcome.answer_id:
                        continue
                    outcome.answer_id = data["messageId"]
                    if data.get("attempt", 1) > 1 and not data.get("resumed"):
                        outcome.restarts += 1
                        chunks, last_seq = [], -1
                    attempt = data.get("attempt", 1)
                elif kind == "response_chunk" and data.get("messageId") == outcome.answer_id:
                    if data["seq"] > last_seq:
                        chunks.append(data["delta"])
                        last_seq = data["seq"]
                elif kind == "response_end" and data.get("messageId") == outcome.answer_id:
                    outcome.result, outcome.content = "answered", data["content"]
                    outcome.garbled = "".join(chunks) != data["content"]
                    return outcome
                elif kind == "error" and (
                    outcome.user_message_id is None
                    or data.get("messageId") in (outcome.user_message_id, outcome.answer_id)
                ):
                    if "not resumed" in data.get("message", "") and outcome.user_message_id is not None:
                        # the answer is not streaming anywhere now: it is stored, or will be
                        outcome.not_resumed += 1
                        if await self._wait_in_history(outcome, deadline):
                            return outcome
                        continue
                    outcome.result, outcome.code = "failed", data["code"]
                    return outcome
            if outcome.user_message_id is not None:
                await self._wait_in_history(outcome, deadline + 5)
        except TimeoutError:
            pass
        return outcome

    def _settled_by_history(self, outcome: Outcome, history: list[dict[str, Any]]) -> bool:
        if outcome.answer_id is not None and (found := _find(history, outcome.answer_id)) is not None:
            outcome.result, outcome.content = "answered", found["content"]
            return True
        if outcome.user_message_id is None:
            # the frame may have been lost with the connection: was the question stored?
            user = next((m for m in history if m["role"] == "user" and m["content"] == outcome.question), None)
            if user is None:
                outcome.result = "unsent"
                return True
            outcome.user_message_id = user["id"]
        return False

    async def _wait_in_history(self, outcome: Outcome, deadline: float) -> bool:
        """Rejoin now and then until the answer to our question is in the history."""
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            try:
                await self._drop()
                history = await self._connect(deadline=deadline)
            except TimeoutError:
                return False
            index = next((i for i, m in enumerate(history) if m["id"] == outcome.user_message_id), None)
            if index is None:
                continue
            user = history[index]
            after = history[index + 1] if index + 1 < len(history) else None
            if after is not None and after["role"] == "assistant":
                outcome.result, outcome.content, outcome.answer_id = "answered", after["content"], after["id"]
                return True
            if user.get("status") == "failed":
                outcome.result = "failed"
                return True
        return False


def _find(history: list[dict[str, Any]], message_id: str) -> dict[str, Any] | None:
    return next((m for m in history if m["id"] == message_id), None)
