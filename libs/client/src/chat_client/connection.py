"""The socket under a ``ChatClient``: open and join, read, and after a drop reconnect with jittered backoff.

One reader task per client reads every frame and hands it to ``Hooks.dispatch``; when the socket
drops it reconnects (``Backoff``), taking a new token from the provider each time, and rejoins with
what ``Hooks.join_data`` says (the chat, the answer to resume). With fallback URLs, each attempt
goes to the next gateway in turn, starting after the one that was lost. It gives up on ``ChatNotFound``, on
a refused fixed token, or when the backoff's attempts run out: then ``Hooks.gave_up`` is told and
every later operation raises that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from chat_client.errors import (
    ChatClientError,
    ChatNotFound,
    ClientClosed,
    ConnectionLost,
    ServerError,
    Unauthorized,
    server_error,
)
from chat_client.models import dumps, loads
from chat_client.policy import Backoff, TokenProvider, get_token

logger = logging.getLogger("chat_client")


class Hooks(Protocol):
    """What the link asks of the client it serves."""

    def join_data(self) -> dict[str, Any]:
        """The ``join_chat`` data besides the token: the chat, and the answer to resume."""
        ...

    def joined(self, data: dict[str, Any], token: str) -> None:
        """``chat_joined`` arrived on a new socket."""
        ...

    def dispatch(self, frame: dict[str, Any]) -> None: ...

    def dropped(self, lost: ConnectionLost) -> None:
        """The socket closed; a reconnect starts."""
        ...

    def gave_up(self, error: ChatClientError) -> None: ...


@dataclass(slots=True)
class Link:
    """One client's socket and its reader task (see the module's docstring)."""

    urls: Sequence[str]
    """the gateway first, then the fallbacks a reconnect tries in turn."""
    token_source: str | TokenProvider
    hooks: Hooks
    backoff: Backoff
    open_timeout: float
    request_timeout: float
    options: dict[str, Any]
    """``websockets.connect`` options."""
    url: str = field(init=False)
    """the gateway of the current (or last) socket."""
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    """request ids, shared by every frame this client sends."""
    ws: ClientConnection | None = None
    reconnects: int = 0
    last_close_code: int | None = None
    fatal: ChatClientError | None = None
    closing: bool = False
    _connected: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.urls = tuple(self.urls)
        self.url = self.urls[0]

    @property
    def opened(self) -> bool:
        return self._reader is not None

    @property
    def connected(self) -> bool:
        return self._connected.is_set() and self.fatal is None and not self.closing

    async def open(self) -> None:
        if self._reader is not None:
            raise RuntimeError("already open")
        self.ws = await self._open_socket(self.url)
        self._connected.set()
        self._reader = asyncio.get_running_loop().create_task(self._read_forever(self.ws), name="chat-client-reader")

    async def close(self) -> None:
        self.closing = True
        self._connected.clear()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def ready(self) -> ClientConnection:
        """The joined socket, waiting up to ``request_timeout`` while a reconnect runs."""
        if self.closing:
            raise ClientClosed("client closed")
        if self.fatal is not None:
            raise self.fatal
        if not self._connected.is_set():
            try:
                async with asyncio.timeout(self.request_timeout):
                    await self._connected.wait()
            except TimeoutError:
                raise ConnectionLost("not connected: still reconnecting") from None
            if self.fatal is not None:
                raise self.fatal
        assert self.ws is not None
        return self.ws

    async def send(self, frame: dict[str, Any]) -> ClientConnection:
        """Send ``frame`` on the joined socket; ``ConnectionLost`` if it closes meanwhile."""
        ws = await self.ready()
        try:
            await ws.send(dumps(frame))
        except ConnectionClosed as exc:
            raise ConnectionLost("connection closed while sending", close_code=ws.close_code) from exc
        return ws

    async def request(
        self, kind: str, data: dict[str, Any], waiting: dict[int, asyncio.Future[dict[str, Any]]]
    ) -> dict[str, Any]:
        """Send a frame and return the ``data`` of the gateway's direct answer, which the router resolves
        in ``waiting`` by requestId; the gateway's error frame is raised, ``TimeoutError`` after
        ``request_timeout``."""
        await self.ready()
        rid = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        waiting[rid] = future
        try:
            await self.send({"type": kind, "data": data, "requestId": rid})
            async with asyncio.timeout(self.request_timeout):
                return await future
        except ConnectionClosed as exc:
            raise ConnectionLost("connection closed while sending") from exc
        finally:
            waiting.pop(rid, None)

    async def _open_socket(self, url: str) -> ClientConnection:
        token = await get_token(self.token_source)
        ws = await websockets.connect(url, **self.options)
        try:
            await self._join(ws, token)
        except BaseException:
            await ws.close()
            raise
        self.url = url
        return ws

    async def _join(self, ws: ClientConnection, token: str) -> None:
        data = {"token": token, **self.hooks.join_data()}
        await ws.send(dumps({"type": "join_chat", "data": data, "requestId": next(self.ids)}))
        async with asyncio.timeout(self.open_timeout):
            while True:
                frame = loads(await ws.recv())
                kind = frame.get("type")
                if kind == "error":
                    raise server_error(frame.get("data") or {})
                if kind == "chat_joined":
                    break
                self.hooks.dispatch(frame)
        self.hooks.joined(frame["data"], token)

    async def _read_forever(self, ws: ClientConnection) -> None:
        """The reader: dispatch frames; when the socket drops, reconnect and go on reading."""
        while True:
            try:
                async for raw in ws:
                    try:
                        self.hooks.dispatch(loads(raw))
                    except (ValueError, KeyError, TypeError, AttributeError):
                        logger.warning("unreadable frame from the gateway ignored")
            except ConnectionClosed:
                pass
            self._connected.clear()
            self.last_close_code = ws.close_code
            if self.closing:
                return
            lost = ConnectionLost(f"connection closed (code {ws.close_code})", close_code=ws.close_code)
            self.hooks.dropped(lost)
            try:
                ws = await self._reconnect(lost)
            except ChatClientError as exc:
                self.fatal = exc
                self.hooks.gave_up(exc)
                self._connected.set()  # wake waiters so that they see the fatal error
                return
            self.ws = ws
            self._connected.set()

    async def _reconnect(self, cause: ConnectionLost) -> ClientConnection:
        policy = self.backoff
        attempt = 0
        lost = self.urls.index(self.url)
        while policy.max_attempts is None or attempt < policy.max_attempts:
            await asyncio.sleep(policy.delay(attempt))
            attempt += 1
            try:
                ws = await self._open_socket(self.urls[(lost + attempt) % len(self.urls)])
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                logger.info("reconnect attempt %d failed: %r", attempt, exc)
                continue
            except ChatNotFound:
                raise
            except Unauthorized:
                if isinstance(self.token_source, str):
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
