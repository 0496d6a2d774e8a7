"""Error codes of SPEC §2 and the exception family that carries them to the client."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    SERVER_AT_CAPACITY = "SERVER_AT_CAPACITY"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    UNAUTHORIZED = "UNAUTHORIZED"
    RATE_LIMITED = "RATE_LIMITED"
    MESSAGE_TOO_LONG = "MESSAGE_TOO_LONG"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    CHAT_NOT_FOUND = "CHAT_NOT_FOUND"
    BUSY = "BUSY"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    TIMEOUT = "TIMEOUT"
    INTERNAL = "INTERNAL"


# The texts operators search their logs for (SPEC §2).
DEFAULT_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.SERVER_AT_CAPACITY: "Server at capacity",
    ErrorCode.TOO_MANY_CONNECTIONS: "Too many connections for user",
    ErrorCode.UNAUTHORIZED: "Unauthorized",
    ErrorCode.RATE_LIMITED: "Rate limit exceeded",
    ErrorCode.MESSAGE_TOO_LONG: "Message too long",
    ErrorCode.PAYLOAD_TOO_LARGE: "Payload too large",
    ErrorCode.INVALID_MESSAGE: "Invalid message",
    ErrorCode.CHAT_NOT_FOUND: "Chat not found",
    ErrorCode.BUSY: "Server busy, try again later",
    ErrorCode.UPSTREAM_ERROR: "The language model failed to answer",
    ErrorCode.TIMEOUT: "No answer within the request timeout",
    ErrorCode.INTERNAL: "Internal error",
}

# WebSocket close codes for the errors that end the connection; the rest keep it open.
CLOSE_CODES: dict[ErrorCode, int] = {
    ErrorCode.SERVER_AT_CAPACITY: 1013,
    ErrorCode.TOO_MANY_CONNECTIONS: 1008,
    ErrorCode.UNAUTHORIZED: 1008,
    ErrorCode.PAYLOAD_TOO_LARGE: 1009,
}


class ChatError(Exception):
    """A failure the client is told about with an error code of the spec.

    ``close_code`` is set when the connection must end after the error frame is sent.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        retry_after_ms: int | None = None,
        message_id: str | None = None,
    ) -> None:
        self.code = code
        self.message = message or DEFAULT_MESSAGES[code]
        self.retry_after_ms = retry_after_ms
        self.message_id = message_id
        super().__init__(f"{code}: {self.message}")

    @property
    def close_code(self) -> int | None:
        return CLOSE_CODES.get(self.code)
