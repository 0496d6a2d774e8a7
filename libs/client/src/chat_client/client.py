"""``ChatClient``: one WebSocket connection to the gateway that survives reconnects.

Cost per client: one reader task (it also runs the reconnects), one WebSocket keepalive task unless
``ping_interval=None``, and a timer handle for the token refresh; answers and requests are futures
and queues fed synchronously by the reader. So thousands of clients fit in one event loop.

Contract:
- ``connect`` opens the socket and joins (or creates) a chat; it raises the gateway's error
  (``Unauthorized``, ``ServerAtCapacity``, ...) or ``OSError``/``TimeoutError`` without retrying.
- After that, a dropped connection is restored with jittered exponential backoff (``Backoff``): a new
  token is taken from the provider, the current chat is joined again with the ``messageId`` and
  ``lastSeq`` of the answer being streamed, so a gateway that can resume sends the rest. When the
  gateway does not resume, the answer is completed from the chat's history once it is stored there
  (looked up every ``resume_timeout`` seconds while nothing streams), or fails with
  ``AnswerInterrupted`` after ``recover_within`` seconds. Requests waiting for a direct answer when the socket dropped
  fail with ``ConnectionLost`` (a ``send`` not yet accepted included: it may or may not be stored).
- A token provider is called again ``refresh_margin`` seconds before the token's ``exp`` (at most
  half-way through its life) and the new token is sent with ``refresh_token``.
- ``close`` ends everything the client started; pending operations raise ``ClientClosed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from chat_client.answer import Answer, AnswerEnd
from chat_client.errors import (
    AnswerInterrupted,
    ChatClientError,
    ChatNotFound,
    ClientClosed,
    ConnectionLost,
    ServerError,
    Unauthorized,
    UpstreamError,
    server_error,
)
from chat_client.policy import Backoff, TokenProvider, get_token, refresh_delay, token_expiry

try:
    import orjson

    def _dumps(frame: dict[str, Any]) -> str:
        return orjson.dumps(frame).decode()

    _loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is optional
    import json

    _dumps = json.dumps  # type: ignore[assignment]
    _loads = json.loads  # type: ignore[assignment]

logger = logging.getLogger("chat_client")

ChatType = Literal["documents", "messages"]


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    id: str
    role: str
    content: str
    created_at: str
    status: str | None = None


@dataclass(frozen=True, slots=True)
class ChatInfo:
    chat_id: str
    chat_type: ChatType
    history: tuple[HistoryMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatSummary:
    chat_id: str
    chat_type: ChatType
    title: str | None
    updated_at: str


def _progress(answer: Answer) -> tuple[int | None, int]:
    return answer.last_seq, len(answer._parts)


def _history(items: Any) -> tuple[HistoryMessage, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(
        HistoryMessage(
            id=str(m.get("id")),
            role=str(m.get("role")),
            content=str(m.get("content") or ""),
            created_at=str(m.get("createdAt") or ""),
            status=m.get("status"),
        )
        for m in items
        if isinstance(m, dict)
    )


class ChatClient:
    """A chat connection. Use ``await ChatClient.connect(url, token)`` or ``async with ChatClient(...)``."""

    def __init__(
        self,
        url: str,
        token: str | TokenProvider,
        *,
        chat_type: ChatType = "messages",
        chat_id: str | None = None,
        reconnect: Backoff | None = None,
        refresh_margin: float = 60.0,
        request_timeout: float = 15.0,
        open_timeout: float = 10.0,
        resume_timeout: float = 5.0,
        recover_within: float = 120.0,
        ping_interval: float | None = 20.0,
        max_size: int = 2**22,
        origin: str | None = None,
    ) -> None:
        self.url = url
        self.chat_type: ChatType = chat_type
        self.chat_id = chat_id
        self.user_id: str | None = None
        self.history: tuple[HistoryMessage, ...] = ()
        self.token_expires_at: float | None = None
        self.reconnects = 0
        self.last_close_code: int | None = None
        self.last_error: ServerError | None = None
        """the last error frame that answered no request of ours (e.g. a token expiry before a close)."""
        self.refresh_margin = refresh_margin
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.resume_timeout = resume_timeout
        self.recover_within = recover_within
        self._recover_until = 0.0
        self._token_source = token
        self._backoff = reconnect if reconnect is not None else Backoff()
        self._connect_options: dict[str, Any] = {
            "compression": None,
            "open_timeout": open_timeout,
            "max_size": max_size,
            "ping_interval": ping_interval,
            "ping_timeout": ping_interval,
            "close_timeout": 2,
            "origin": origin,
        }
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._answers: dict[int, Answer] = {}
        self._by_message: dict[str, Answer] = {}
        self._unstarted: deque[Answer] = deque()
        self._connected = asyncio.Event()
        self._closing = False
        self._fatal: ChatClientError | None = None
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._recovery_timer: asyncio.TimerHandle | None = None
        self._progress: dict[int, tuple[int | None, int]] = {}
        self._side_tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(cls, url: str, token: str | TokenProvider, **options: Any) -> ChatClient:
        """Open a connection and join a chat (``chat_id``) or create one (no ``chat_id``)."""
        client = cls(url, token, **options)
        await client.open()
        return client

    async def open(self) -> None:
        if self._reader is not None:
            raise RuntimeError("already open")
        ws = await self._open_socket()
        self._ws = ws
        self._connected.set()
        self._reader = asyncio.get_running_loop().create_task(self._read_forever(ws), name="chat-client-reader")

    async def close(self) -> None:
        """Close the socket and stop every task and timer of this client."""
        if self._closing:
            return
        self._closing = True
        self._connected.clear()
        self._cancel_refresh()
        if self._recovery_timer is not None:
            self._recovery_timer.cancel()
        for task in list(self._side_tasks):
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        closed = ClientClosed("client closed")
        self._fail_waiters(closed)
        self._fail_answers(closed)

    async def __aenter__(self) -> ChatClient:
        if self._reader is None:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Joined and usable now (false while reconnecting, after giving up and after ``close``)."""
        return self._connected.is_set() and self._fatal is None and not self._closing

    # ------------------------------------------------------------------ operations

    async def create_chat(self, chat_type: ChatType) -> ChatInfo:
        frame = await self._request("create_chat", {"chatType": chat_type})
        return ChatInfo(frame["chatId"], frame["chatType"])

    async def switch_chat(self, chat_id: str, chat_type: ChatType) -> ChatInfo:
        frame = await self._request("switch_chat", {"chatId": chat_id, "chatType": chat_type})
        return ChatInfo(frame["chatId"], frame["chatType"], _history(frame.get("history")))

    async def list_chats(self) -> list[ChatSummary]:
        """The user's chats, most recently used first (needs a gateway with ``list_chats``)."""
        frame = await self._request("list_chats", {})
        return [
            ChatSummary(c["chatId"], c["chatType"], c.get("title"), c.get("updatedAt", ""))
            for c in frame.get("chats", [])
        ]

    async def send(self, content: str) -> Answer:
        """Send a user message; return once the gateway accepted it (raises ``RateLimited`` etc.).

        Iterate the returned ``Answer`` for the streamed chunks, or ``await answer.result()``.
        """
        ws = await self._ready()
        rid = next(self._ids)
        answer = Answer(request_id=rid, chat_id=self.chat_id, _cancel=self._cancel_answer)
        self._answers[rid] = answer
        try:
            await ws.send(_dumps({"type": "send_message", "data": {"content": content}, "requestId": rid}))
            async with asyncio.timeout(self.request_timeout):
                await answer._accepted
        except ConnectionClosed as exc:
            self._forget(answer)
            raise ConnectionLost("connection closed while sending", close_code=ws.close_code) from exc
        except BaseException:
            self._forget(answer)
            raise
        return answer

    async def ask(self, content: str) -> AnswerEnd:
        """Send and wait for the whole answer."""
        answer = await self.send(content)
        return await answer.result()

    async def cancel(self, message_id: str | None = None) -> None:
        """Stop the answer ``message_id`` (the answer's or the question's id), or every answer of this connection."""
        data = {} if message_id is None else {"messageId": message_id}
        await self._send_frame("cancel", data)

    async def refresh_token(self) -> float:
        """Send a fresh token from the provider now; return its expiry (epoch seconds)."""
        token = await get_token(self._token_source)
        frame = await self._request("refresh_token", {"token": token})
        expires_at = float(frame["expiresAt"]) / 1000
        self._schedule_refresh(token, expires_at)
        return expires_at

    async def ping(self) -> int:
        """Application-level ping; returns the gateway's timestamp (ms)."""
        frame = await self._request("ping", {})
        return int(frame["timestamp"])

    # ------------------------------------------------------------------ sending

    async def _ready(self) -> ClientConnection:
        if self._closing:
            raise ClientClosed("client closed")
        if self._fatal is not None:
            raise self._fatal
        if not self._connected.is_set():
            try:
                async with asyncio.timeout(self.request_timeout):
                    await self._connected.wait()
            except TimeoutError:
                raise ConnectionLost("not connected: still reconnecting") from None
            if self._fatal is not None:
                raise self._fatal
        assert self._ws is not None
        return self._ws

    async def _send_frame(self, kind: str, data: dict[str, Any]) -> None:
        ws = await self._ready()
        try:
            await ws.send(_dumps({"type": kind, "data": data}))
        except ConnectionClosed as exc:
            raise ConnectionLost("connection closed while sending") from exc

    async def _request(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Send a frame and return the ``data`` of the gateway's direct answer (matched by requestId)."""
        ws = await self._ready()
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            await ws.send(_dumps({"type": kind, "data": data, "requestId": rid}))
            async with asyncio.timeout(self.request_timeout):
                return await future
        except ConnectionClosed as exc:
            raise ConnectionLost("connection closed while sending") from exc
        finally:
            self._waiting.pop(rid, None)

    async def _cancel_answer(self, answer: Answer) -> None:
        if answer.message_id is None and answer.user_message_id is None:
            await answer._accepted
        await self.cancel(answer.message_id or answer.user_message_id)

    # ------------------------------------------------------------------ connecting

    async def _open_socket(self) -> ClientConnection:
        token = await get_token(self._token_source)
        ws = await websockets.connect(self.url, **self._connect_options)
        try:
            await self._join(ws, token)
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _join(self, ws: ClientConnection, token: str) -> None:
        data: dict[str, Any] = {"token": token, "chatType": self.chat_type}
        if self.chat_id is not None:
            data["chatId"] = self.chat_id
        streaming = self._streaming_answer()
        if streaming is not None:
            data["messageId"] = streaming.message_id
            if streaming.last_seq is not None:
                data["lastSeq"] = streaming.last_seq
                if streaming.attempt > 1:  # the sequence numbers count in this attempt
                    data["attempt"] = streaming.attempt
        await ws.send(_dumps({"type": "join_chat", "data": data, "requestId": next(self._ids)}))
        async with asyncio.timeout(self.open_timeout):
            while True:
                frame = _loads(await ws.recv())
                kind = frame.get("type")
                if kind == "error":
                    raise server_error(frame.get("data") or {})
                if kind == "chat_joined":
                    break
                self._dispatch(frame)
        joined = frame["data"]
        self.user_id = joined.get("userId")
        self._enter(joined)
        self._schedule_refresh(token, None)
        self._recover_until = time.monotonic() + self.recover_within
        self._recover_answers()

    async def _read_forever(self, ws: ClientConnection) -> None:
        """The reader: dispatch frames; when the socket drops, reconnect and go on reading."""
        while True:
            try:
                async for raw in ws:
                    try:
                        self._dispatch(_loads(raw))
                    except (ValueError, KeyError, TypeError, AttributeError):
                        logger.warning("unreadable frame from the gateway ignored")
            except ConnectionClosed:
                pass
            self._connected.clear()
            self.last_close_code = ws.close_code
            if self._closing:
                return
            lost = ConnectionLost(f"connection closed (code {ws.close_code})", close_code=ws.close_code)
            self._cancel_refresh()
            self._fail_waiters(lost)
            for answer in list(self._answers.values()):
                if answer.user_message_id is None:  # not accepted yet: whether it was stored is unknown
                    self._fail(answer, lost)
            try:
                ws = await self._reconnect(lost)
            except ChatClientError as exc:
                self._fatal = exc
                self._fail_answers(exc)
                self._connected.set()  # wake waiters so that they see the fatal error
                return
            self._ws = ws
            self._connected.set()

    async def _reconnect(self, cause: ConnectionLost) -> ClientConnection:
        policy = self._backoff
        attempt = 0
        while policy.max_attempts is None or attempt < policy.max_attempts:
            await asyncio.sleep(policy.delay(attempt))
            attempt += 1
            try:
                ws = await self._open_socket()
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                logger.info("reconnect attempt %d failed: %r", attempt, exc)
                continue
            except ChatNotFound:
                raise
            except Unauthorized:
                if isinstance(self._token_source, str):
                    raise  # the same token will not become valid again
                logger.info("reconnect attempt %d: token refused", attempt)
                continue
            except ServerError as exc:  # at capacity, too many connections, busy: later may work
                logger.info("reconnect attempt %d refused: %s", attempt, exc.code)
                continue
            self.reconnects += 1
            logger.info("reconnected after %d attempt(s)", attempt)
            return ws
        raise ConnectionLost(f"gave up reconnecting after {attempt} attempt(s)", close_code=cause.close_code)

    # ------------------------------------------------------------------ reading

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        data = frame.get("data") or {}
        rid = frame.get("requestId")
        if kind == "response_chunk":
            answer = self._by_message.get(data["messageId"])
            if answer is not None:
                answer._on_chunk(data["delta"], data.get("seq"))
        elif kind == "response_start":
            self._on_start(data)
        elif kind == "response_end":
            answer = self._by_message.get(data["messageId"])
            if answer is not None:
                end = AnswerEnd(
                    data["messageId"], data.get("content", ""), data.get("finishReason") or "stop", data.get("usage")
                )
                answer._on_end(end)
                self._forget(answer)
        elif kind == "message_accepted":
            answer = self._answers.get(rid) if isinstance(rid, int) else None
            if answer is not None and answer.user_message_id is None:
                answer._on_accepted(data["messageId"])
                self._by_message[data["messageId"]] = answer
                self._unstarted.append(answer)
        elif kind == "error":
            self._on_error(rid, data)
        else:
            if kind in ("chat_joined", "chat_switched", "chat_created"):
                self._enter(data)
            future = self._waiting.pop(rid, None) if isinstance(rid, int) else None
            if future is not None and not future.done():
                future.set_result(data)

    def _on_start(self, data: dict[str, Any]) -> None:
        message_id = data["messageId"]
        attempt = data.get("attempt") or 1
        known = self._by_message.get(message_id)
        if known is not None:
            # resumed: the rest follows; a later attempt (a redelivered request): the answer starts over
            if not data.get("resumed") and attempt > known.attempt:
                known._on_restart(attempt)
            known._recovering = False
            return
        answer = self._by_message.get(data.get("userMessageId") or "")
        if answer is not None:
            with contextlib.suppress(ValueError):
                self._unstarted.remove(answer)
        else:  # a gateway that does not name the question: answers start in the order they were accepted
            while self._unstarted and answer is None:
                candidate = self._unstarted.popleft()
                if not candidate.done and candidate.message_id is None:
                    answer = candidate
        if answer is not None:
            answer._on_start(message_id)
            answer.attempt = attempt
            self._by_message[message_id] = answer

    def _on_error(self, rid: Any, data: dict[str, Any]) -> None:
        error = server_error(data)
        future = self._waiting.pop(rid, None) if isinstance(rid, int) else None
        if future is not None:
            if not future.done():
                future.set_exception(error)
            return
        answer = self._answers.get(rid) if isinstance(rid, int) else None
        if answer is None and error.message_id is not None:
            answer = self._by_message.get(error.message_id)
        if answer is not None:
            if answer._recovering and error.code == "TIMEOUT":
                # "answer not resumed": no worker holds it now; it will be in the history when it ends
                logger.info("answer %s not resumed; looking for it in the history", answer.message_id)
                return
            self._fail(answer, error)
            return
        self.last_error = error
        logger.info("gateway error: %s", error)

    def _enter(self, data: dict[str, Any]) -> None:
        self.chat_id = data["chatId"]
        self.chat_type = data["chatType"]
        self.history = _history(data.get("history"))

    # ------------------------------------------------------------------ answers across reconnects

    def _streaming_answer(self) -> Answer | None:
        """The latest started, unfinished answer of the current chat: the one a rejoin asks to resume."""
        candidates = [a for a in self._answers.values() if a.message_id and a.chat_id == self.chat_id and not a.done]
        return candidates[-1] if candidates else None

    def _recover_answers(self) -> None:
        """After a (re)join: finish the answers whose end is in the history; check the rest again later."""
        waiting = False
        for answer in list(self._answers.values()):
            if answer.done or answer.user_message_id is None:
                continue
            if answer.chat_id != self.chat_id:
                self._fail(answer, AnswerInterrupted("the connection was restored in another chat"))
                continue
            stored = self._stored_answer(answer)
            if stored is None or stored.status not in ("complete", "cancelled", "failed"):
                answer._recovering = True
                waiting = True
            elif stored.status == "failed":
                self._fail(answer, UpstreamError("The language model failed to answer", message_id=stored.id))
            else:
                reason = "cancelled" if stored.status == "cancelled" else "stop"
                logger.info("answer %s completed from the chat history after a reconnect", stored.id)
                answer._on_start(stored.id)
                answer._on_end(AnswerEnd(stored.id, stored.content, reason, recovered=True))
                self._forget(answer)
        if waiting:
            self._schedule_check()

    def _schedule_check(self) -> None:
        if self._closing:
            return
        if self._recovery_timer is not None:
            self._recovery_timer.cancel()
        self._progress = {a.request_id: _progress(a) for a in self._answers.values() if not a.done}
        self._recovery_timer = asyncio.get_running_loop().call_later(
            self.resume_timeout, lambda: self._spawn(self._check_unfinished())
        )

    def _stored_answer(self, answer: Answer) -> HistoryMessage | None:
        after_question = False
        for message in self.history:
            if answer.message_id is not None and message.id == answer.message_id:
                return message
            if message.id == answer.user_message_id:
                after_question = True
            elif after_question and message.role == "assistant" and answer.message_id is None:
                return message
        return None

    async def _check_unfinished(self) -> None:
        """Every ``resume_timeout`` after a rejoin while answers are open: those that received nothing
        since are looked up in the history again; ``recover_within`` after the rejoin they are given up."""
        self._recovery_timer = None
        open_answers = [a for a in self._answers.values() if not a.done and a.user_message_id is not None]
        if self._closing or not open_answers:
            return
        stalled = [a for a in open_answers if self._progress.get(a.request_id) == _progress(a)]
        if not stalled:  # every open answer is streaming (resumed): keep an eye on it, no more
            self._schedule_check()
            return
        if time.monotonic() > self._recover_until:
            for answer in stalled:
                self._fail(answer, AnswerInterrupted("the answer was cut off by a reconnect"))
            if len(stalled) < len(open_answers):
                self._schedule_check()
            return
        if self.chat_id is not None:
            with contextlib.suppress(ChatClientError, TimeoutError):
                await self.switch_chat(self.chat_id, self.chat_type)  # answers with the chat's history
        self._recover_answers()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closing:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # ------------------------------------------------------------------ bookkeeping

    def _forget(self, answer: Answer) -> None:
        self._answers.pop(answer.request_id, None)
        if self._unstarted:  # it ended before a response_start took it out (BUSY, lost, recovered)
            with contextlib.suppress(ValueError):
                self._unstarted.remove(answer)
        for key in (answer.user_message_id, answer.message_id):
            if key is not None and self._by_message.get(key) is answer:
                del self._by_message[key]

    def _fail(self, answer: Answer, error: BaseException) -> None:
        answer._on_error(error)
        self._forget(answer)

    def _fail_waiters(self, error: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    def _fail_answers(self, error: BaseException) -> None:
        for answer in list(self._answers.values()):
            self._fail(answer, error)
        self._unstarted.clear()

    # ------------------------------------------------------------------ token refresh

    def _schedule_refresh(self, token: str, expires_at: float | None) -> None:
        self._cancel_refresh()
        expires = expires_at if expires_at is not None else token_expiry(token)
        self.token_expires_at = expires
        if expires is None or isinstance(self._token_source, str) or self._closing:
            return
        delay = refresh_delay(expires - time.time(), self.refresh_margin)
        self._refresh_timer = asyncio.get_running_loop().call_later(delay, self._refresh_due)

    def _cancel_refresh(self) -> None:
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None

    def _refresh_due(self) -> None:
        self._refresh_timer = None
        self._spawn(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh_token()
        except (ChatClientError, TimeoutError) as exc:
            # the gateway closes the connection when the token expires; the reconnect takes a new one
            logger.warning("token refresh failed: %s", exc)
