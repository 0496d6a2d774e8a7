"""The thin connection layer the load tool speaks through: open a socket, send and receive frames.

Kept to four operations so that it can sit on the project's Python client (``chat_client``) or on
``websockets`` directly; the rest of the tool never touches the socket library.
"""

from __future__ import annotations

from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

Frame = dict[str, Any]


class ConnectionLost(Exception):
    """The socket closed (or never opened); ``reason`` says how, for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameConnection:
    """One client WebSocket speaking JSON frames, compression off like the gateway."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    @classmethod
    async def open(cls, url: str, *, open_timeout: float = 30.0) -> FrameConnection:
        try:
            ws = await websockets.connect(
                url,
                compression=None,
                max_size=2**22,
                open_timeout=open_timeout,
                close_timeout=2,
                # the gateway pings every WS_PING_INTERVAL and the library answers; our own pings
                # would only add frames to every one of thousands of sockets
                ping_interval=None,
            )
        except InvalidHandshake as exc:
            raise ConnectionLost(f"handshake: {type(exc).__name__}") from exc
        except TimeoutError as exc:
            raise ConnectionLost("connect timeout") from exc
        except OSError as exc:
            raise ConnectionLost(f"connect: {exc.strerror or type(exc).__name__}") from exc
        return cls(ws)

    async def send(self, frame: Frame) -> None:
        try:
            await self._ws.send(orjson.dumps(frame).decode())
        except ConnectionClosed as exc:
            raise ConnectionLost(_closed(exc)) from exc

    async def recv(self) -> Frame:
        try:
            raw = await self._ws.recv()
        except ConnectionClosed as exc:
            raise ConnectionLost(_closed(exc)) from exc
        frame = orjson.loads(raw)
        if not isinstance(frame, dict):
            raise ConnectionLost("server sent a frame that is not an object")
        return frame

    async def close(self) -> None:
        await self._ws.close()


def _closed(exc: ConnectionClosed) -> str:
    code = exc.rcvd.code if exc.rcvd is not None else None
    return f"closed {code}" if code is not None else "closed"
