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
- ``fallback_urls`` are other gateways of the same service: each reconnect attempt goes to the next
  of ``url`` and ``fallback_urls`` in turn, starting after the one that was lost (``connect`` uses ``url``).
- ``close`` ends everything the client started; pending operations raise ``ClientClosed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

from chat_client.answer import Answer, AnswerEnd
from chat_client.connection import Link
from chat_client.errors import ChatClientError, ClientClosed, ConnectionLost, ServerError
from chat_client.models import ChatInfo, ChatSummary, ChatType, HistoryMessage, history_of
from chat_client.policy import Backoff, TokenProvider, get_token
from chat_client.recovery import Recovery
from chat_client.refresh import TokenRefresh
from chat_client.routing import Routing

__all__ = ["ChatClient", "ChatInfo", "ChatSummary", "ChatType", "HistoryMessage"]


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
        fallback_urls: Sequence[str] = (),
    ) -> None:
        self.chat_type: ChatType = chat_type
        self.chat_id = chat_id
        self.user_id: str | None = None
        self.history: tuple[HistoryMessage, ...] = ()
        self.request_timeout = request_timeout
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._routing = Routing(self._enter)
        self._recovery = Recovery(
            self, self._routing, self._spawn, resume_timeout=resume_timeout, recover_within=recover_within
        )
        self._refresh = TokenRefresh(token, self.refresh_token, self._spawn, margin=refresh_margin)
        options = {"compression": None, "open_timeout": open_timeout, "max_size": max_size, "origin": origin}
        options |= {"ping_interval": ping_interval, "ping_timeout": ping_interval, "close_timeout": 2}
        self._link = Link(
            (url, *fallback_urls),
            token,
            self,
            backoff=reconnect if reconnect is not None else Backoff(),
            open_timeout=open_timeout,
            request_timeout=request_timeout,
            options=options,
        )

    @classmethod
    async def connect(cls, url: str, token: str | TokenProvider, **options: Any) -> ChatClient:
        """Open a connection and join a chat (``chat_id``) or create one (no ``chat_id``)."""
        client = cls(url, token, **options)
        await client.open()
        return client

    async def open(self) -> None:
        await self._link.open()

    async def close(self) -> None:
        """Close the socket and stop every task and timer of this client."""
        if self._closing:
            return
        self._closing = True
        self._refresh.close()
        self._recovery.close()
        for task in list(self._side_tasks):
            task.cancel()
        await self._link.close()
        closed = ClientClosed("client closed")
        self._routing.fail_waiters(closed)
        self._routing.fail_answers(closed)

    async def __aenter__(self) -> ChatClient:
        if not self._link.opened:
            await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """Joined and usable now (false while reconnecting, after giving up and after ``close``)."""
        return self._link.connected and not self._closing

    @property
    def url(self) -> str:
        """The gateway of the current socket (or of the last one): ``url`` or one of ``fallback_urls``."""
        return self._link.url

    @property
    def reconnects(self) -> int:
        return self._link.reconnects

    @property
    def last_close_code(self) -> int | None:
        return self._link.last_close_code

    @property
    def last_error(self) -> ServerError | None:
        """the last error frame that answered no request of ours (e.g. a token expiry before a close)."""
        return self._routing.last_error

    @property
    def token_expires_at(self) -> float | None:
        return self._refresh.expires_at

    # operations

    async def create_chat(self, chat_type: ChatType) -> ChatInfo:
        frame = await self._request("create_chat", {"chatType": chat_type})
        return ChatInfo(frame["chatId"], frame["chatType"])

    async def switch_chat(self, chat_id: str, chat_type: ChatType) -> ChatInfo:
        frame = await self._request("switch_chat", {"chatId": chat_id, "chatType": chat_type})
        return ChatInfo(frame["chatId"], frame["chatType"], history_of(frame.get("history")))

    async def list_chats(self) -> list[ChatSummary]:
        """The user's chats, most recently used first (needs a gateway with ``list_chats``)."""
        frame = await self._request("list_chats", {})
        chats = frame.get("chats", [])
        return [ChatSummary(c["chatId"], c["chatType"], c.get("title"), c.get("updatedAt", "")) for c in chats]

    async def send(self, content: str) -> Answer:
        """Send a user message; return once the gateway accepted it (raises ``RateLimited`` etc.).

        Iterate the returned ``Answer`` for the streamed chunks, or ``await answer.result()``.
        """
        await self._link.ready()
        rid = next(self._link.ids)
        answer = Answer(request_id=rid, chat_id=self.chat_id, _cancel=self._cancel_answer)
        self._routing.answers[rid] = answer
        try:
            await self._link.send({"type": "send_message", "data": {"content": content}, "requestId": rid})
            async with asyncio.timeout(self.request_timeout):
                await answer._accepted
        except BaseException:
            self._routing.forget(answer)
            raise
        return answer

    async def ask(self, content: str) -> AnswerEnd:
        """Send and wait for the whole answer."""
        answer = await self.send(content)
        return await answer.result()

    async def cancel(self, message_id: str | None = None) -> None:
        """Stop the answer ``message_id`` (the answer's or the question's id), or every answer of this connection."""
        data = {} if message_id is None else {"messageId": message_id}
        await self._link.send({"type": "cancel", "data": data})

    async def refresh_token(self) -> float:
        """Send a fresh token from the provider now; return its expiry (epoch seconds)."""
        token = await get_token(self._link.token_source)
        frame = await self._request("refresh_token", {"token": token})
        expires_at = float(frame["expiresAt"]) / 1000
        self._refresh.schedule(token, expires_at)
        return expires_at

    async def ping(self) -> int:
        """Application-level ping; returns the gateway's timestamp (ms)."""
        frame = await self._request("ping", {})
        return int(frame["timestamp"])

    async def _request(self, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self._link.request(kind, data, self._routing.waiting)

    async def _cancel_answer(self, answer: Answer) -> None:
        if answer.message_id is None and answer.user_message_id is None:
            await answer._accepted
        await self.cancel(answer.message_id or answer.user_message_id)

    def _enter(self, data: dict[str, Any]) -> None:
        self.chat_id = data["chatId"]
        self.chat_type = data["chatType"]
        self.history = history_of(data.get("history"))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closing:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # the link's hooks (chat_client.connection.Hooks)

    def join_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"chatType": self.chat_type}
        if self.chat_id is not None:
            data["chatId"] = self.chat_id
        return data | self._recovery.resume_data()

    def joined(self, data: dict[str, Any], token: str) -> None:
        self.user_id = data.get("userId")
        self._enter(data)
        self._refresh.schedule(token, None)
        self._recovery.joined()

    def dispatch(self, frame: dict[str, Any]) -> None:
        self._routing.dispatch(frame)

    def dropped(self, lost: ConnectionLost) -> None:
        self._refresh.cancel()
        self._routing.fail_waiters(lost)
        self._routing.fail_unaccepted(lost)

    def gave_up(self, error: ChatClientError) -> None:
        self._routing.fail_answers(error)
