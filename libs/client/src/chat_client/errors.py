"""What can go wrong, as exceptions a caller can act on.

``ServerError`` subclasses map the gateway's error codes (SPEC §2) one to one; ``retry_after`` is set
on ``RateLimited`` and ``Busy``. ``ConnectionLost`` means the connection dropped while a request
waited for its answer, or could not be restored; ``AnswerInterrupted`` means a streamed answer was cut
off by a reconnect and could be neither resumed nor recovered from the chat's history.
"""

from __future__ import annotations

from typing import Any


class ChatClientError(Exception):
    """Base of every error the client raises."""


class ClientClosed(ChatClientError):
    """The client was closed (by ``close()``) while the operation waited."""


class ConnectionLost(ChatClientError):
    """The WebSocket closed under a request, or reconnecting gave up."""

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class AnswerInterrupted(ChatClientError):
    """A reconnect cut a streaming answer off and neither resume nor history gave its end."""


ERRORS_BY_CODE: dict[str, type[ServerError]] = {}
"""The exception class of each error code of the spec; filled by the subclasses as they are defined."""


class ServerError(ChatClientError):
    """An ``error`` frame from the gateway. ``code`` is the spec's code, ``message`` its human text.

    A subclass names its code in the class statement (``class Busy(ServerError, code="BUSY")``), which
    registers it in ``ERRORS_BY_CODE``; ``closes_connection`` says the gateway closes the socket after it.
    """

    code: str = "INTERNAL"
    closes_connection: bool = False

    def __init_subclass__(cls, *, code: str | None = None, closes_connection: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code, cls.closes_connection = code, closes_connection
            ERRORS_BY_CODE[code] = cls

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after_ms: int | None = None,
        message_id: str | None = None,
    ) -> None:
        super().__init__(f"{code or self.code}: {message}")
        if code is not None:
            self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.message_id = message_id

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before trying again, when the gateway said so."""
        return None if self.retry_after_ms is None else self.retry_after_ms / 1000


class ServerAtCapacity(ServerError, code="SERVER_AT_CAPACITY", closes_connection=True):
    """The gateway holds all the connections it can; try again later (or another gateway)."""


class TooManyConnections(ServerError, code="TOO_MANY_CONNECTIONS", closes_connection=True):
    """This user already holds as many connections as one user may."""


class Unauthorized(ServerError, code="UNAUTHORIZED", closes_connection=True):
    """A missing, malformed, forged or expired token (or a first frame that is not ``join_chat``)."""


class PayloadTooLarge(ServerError, code="PAYLOAD_TOO_LARGE", closes_connection=True):
    """A frame larger than the gateway accepts."""


class RateLimited(ServerError, code="RATE_LIMITED"):
    """Too many messages in the window; ``retry_after`` says when the next is taken."""


class MessageTooLong(ServerError, code="MESSAGE_TOO_LONG"):
    """The message's content is over the gateway's limit."""


class InvalidMessage(ServerError, code="INVALID_MESSAGE"):
    """A frame the gateway could not read or that breaks the protocol."""


class ChatNotFound(ServerError, code="CHAT_NOT_FOUND"):
    """The chat is unknown or another user's (the gateway does not say which)."""


class Busy(ServerError, code="BUSY"):
    """No capacity to answer now; ``retry_after`` says when to try again."""


class UpstreamError(ServerError, code="UPSTREAM_ERROR"):
    """The language model failed to answer, after the worker's retries."""


class RequestTimeout(ServerError, code="TIMEOUT"):
    """The gateway's ``TIMEOUT``: no answer within its request timeout."""


class InternalError(ServerError, code="INTERNAL"):
    """Something failed inside the gateway."""


def server_error(data: dict[str, Any]) -> ServerError:
    """The exception for an ``error`` frame's ``data``; an unknown code still gives a ``ServerError``."""
    code = str(data.get("code") or "INTERNAL")
    retry = data.get("retryAfterMs")
    message_id = data.get("messageId")
    return ERRORS_BY_CODE.get(code, ServerError)(
        str(data.get("message") or code),
        code=code,
        retry_after_ms=int(retry) if isinstance(retry, int | float) else None,
        message_id=message_id if isinstance(message_id, str) else None,
    )
