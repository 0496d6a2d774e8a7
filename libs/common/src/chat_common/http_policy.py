"""HTTP policy of the gateway and the monitor: security headers, and bounds on what a request may be.

Security headers (the gateway's chat page, the monitor's dashboard):

Both pages load only their own files (no inline script or style, nothing from a CDN), so the policy
is ``'self'`` for everything; the chat page also connects to its own WebSocket. ``frame-ancestors
'none'`` (and ``X-Frame-Options`` for old browsers) stops clickjacking, ``nosniff`` stops a browser
from running a response as another type than it is declared. A pure ASGI middleware: WebSocket
traffic passes untouched.

Request bounds: uvicorn's h11 parser accepts a request line or headers of any size when they arrive
at once; ``RequestLimits`` answers 431 beyond ``MAX_TARGET_BYTES`` / ``MAX_HEADER_BYTES`` (nginx's
defaults are of this order), as the worker's own endpoint does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BASE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Add ``Content-Security-Policy``, ``X-Content-Type-Options``, ``X-Frame-Options`` and
    ``Referrer-Policy`` to every HTTP response; ``websocket`` lets the page connect to
    ``ws(s)://<its own host>``."""

    def __init__(self, app: ASGIApp, *, websocket: bool = False) -> None:
        self.app = app
        self.websocket = websocket

    def _policy(self, scope: Scope) -> bytes:
        if not self.websocket:
            return f"{BASE_POLICY}; connect-src 'self'".encode()
        host = next((value for name, value in scope.get("headers", ()) if name == b"host"), b"")
        # 'self' covers ws: and wss: of the same host in CSP 3; the explicit sources are for older browsers
        safe = host.decode("latin-1") if host and all(c not in host for c in b" ;,'\"") else ""
        extra = f" ws://{safe} wss://{safe}" if safe else ""
        return f"{BASE_POLICY}; connect-src 'self'{extra}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self._policy(scope)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers += [
                    (b"content-security-policy", policy),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


MAX_TARGET_BYTES = 8192
MAX_HEADER_BYTES = 16_384


class RequestLimits:
    """Answer ``431 Request Header Fields Too Large`` to an HTTP request whose target (path and query)
    or headers are larger than the bounds, before the application sees it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            headers = sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))
            if target > MAX_TARGET_BYTES or headers > MAX_HEADER_BYTES:
                body = b"Request Header Fields Too Large\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 431,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
