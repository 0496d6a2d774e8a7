"""Refusals: how a client is told no, in one place: counted, logged, an error frame, the close (SPEC §2, §6).

Every refusal is counted once in ``chat_gateway_refusals{code, reason}`` and logged once, at the
layer that decides, with the connection id, user and client address but never the token or the
message content. ``code`` is the spec's error code (or ``FORBIDDEN_ORIGIN`` for a handshake refused
before any frame can be sent); ``reason`` tells the cases of one code apart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from chat_common.errors import ChatError, ErrorCode
from chat_common.server_frames import error_frame

if TYPE_CHECKING:
    from chat_gateway.connection import Connection
    from chat_gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)

# The codes that are a refusal (a limit or a check said no), as opposed to a failure of ours.
REFUSAL_CODES = frozenset(
    {
        ErrorCode.SERVER_AT_CAPACITY,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.MESSAGE_TOO_LONG,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.INVALID_MESSAGE,
    }
)


class Refusal(ChatError):
    """A ``ChatError`` that knows which check refused, for the metrics and the log."""

    def __init__(
        self, code: ErrorCode, message: str | None = None, *, reason: str, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(code, message, retry_after_ms=retry_after_ms)
        self.reason = reason


def reason_of(error: ChatError) -> str:
    return error.reason if isinstance(error, Refusal) else error.code.value.lower()


def record_refusal(
    metrics: GatewayMetrics,
    connection: Connection | None,
    code: str,
    reason: str,
    *,
    address: str | None = None,
) -> None:
    """Count and log one refusal."""
    metrics.refusals.labels(code, reason).inc()
    if connection is not None:
        logger.info(
            "connection %s refused: %s (%s) user=%s address=%s",
            connection.id,
            code,
            reason,
            connection.user_id or "-",
            connection.client_address,
        )
    else:
        logger.info("handshake refused: %s (%s) address=%s", code, reason, address or "-")


def is_refusal(error: ChatError) -> bool:
    return error.code in REFUSAL_CODES


async def refuse(
    metrics: GatewayMetrics,
    connection: Connection,
    error: ChatError,
    request_id: str | int | None = None,
    *,
    close: bool = False,
) -> None:
    """Tell the client ``error``: a refusal code is counted and logged once (by its check's
    ``reason``), every error frame is counted by code, and the connection is closed when the
    code ends it (``ChatError.close_code``) or ``close`` says so (a refusal before authentication).
    Returns once the close is written or ``WS_SEND_TIMEOUT`` dropped the peer."""
    if is_refusal(error):
        record_refusal(metrics, connection, error.code.value, reason_of(error))
    metrics.errors.labels(error.code.value).inc()
    connection.send(error_frame(error, request_id))
    close_code = error.close_code or (1008 if close else None)
    if close_code is not None:
        await connection.close(close_code, error.message[:120])
