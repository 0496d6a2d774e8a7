"""Which component runs each client frame of an authenticated connection, and how its failure reaches the client.

Contract of ``dispatch``: nothing raises out of it. A ``ChatError`` becomes an error frame (and a
close if its code ends the connection, ``refuse``); PostgreSQL being away becomes ``BUSY`` with
``retryAfterMs``; anything else is logged with the connection id and answered ``INTERNAL``. A frame
that arrives once the connection is closing is dropped unanswered: the client, reconnecting, sees
from the history that it was not taken.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chat_common.errors import ChatError, ErrorCode
from chat_common.frames import (
    Cancel,
    ClientFrame,
    CreateChat,
    JoinChat,
    ListChats,
    Ping,
    RefreshToken,
    SendMessage,
    SwitchChat,
)
from chat_common.server_frames import pong_frame, token_refreshed_frame
from chat_common.store import UNAVAILABLE_ERRORS
from chat_gateway.chats import Chats
from chat_gateway.connection import Connection
from chat_gateway.messages import Messages
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.refusals import refuse
from chat_gateway.tokens import TokenKeeper

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FrameHandler:
    """One per gateway: the connection is an argument, so an idle connection costs no handler."""

    tokens: TokenKeeper
    chats: Chats
    messages: Messages
    metrics: GatewayMetrics
    busy_retry_ms: int

    async def dispatch(self, connection: Connection, frame: ClientFrame, *, verified: bool = False) -> None:
        """Run ``frame``; ``verified``: its token (a ``join_chat``'s) was verified just now."""
        if connection.closed:
            return
        connection.dispatching += 1
        try:
            await self._run(connection, frame, verified=verified)
        except ChatError as error:
            await refuse(self.metrics, connection, error, frame.requestId)
        except UNAVAILABLE_ERRORS as exc:
            # PostgreSQL (or another store) is away: a clear, retryable answer, not INTERNAL
            logger.warning("connection %s: %s failed: store unavailable (%s)", connection.id, frame.type, exc)
            busy = ChatError(
                ErrorCode.BUSY, "Server busy: storage unavailable, try again later", retry_after_ms=self.busy_retry_ms
            )
            await refuse(self.metrics, connection, busy, frame.requestId)
        except Exception:
            logger.exception("connection %s: %s failed", connection.id, frame.type)
            await refuse(self.metrics, connection, ChatError(ErrorCode.INTERNAL), frame.requestId)
        finally:
            connection.dispatching -= 1

    async def _run(self, connection: Connection, frame: ClientFrame, *, verified: bool) -> None:
        user_id = connection.user_id
        if user_id is None:  # pragma: no cover - the session dispatches only after authentication
            raise ChatError(ErrorCode.UNAUTHORIZED)
        match frame:
            case Ping():
                connection.send(pong_frame(frame.requestId))
            case SendMessage():
                await self.messages.send(connection, frame, user_id)
            case JoinChat():
                # every join_chat carries a token: a later one must be the same user's, and extends
                # the connection like refresh_token
                if not verified:
                    await self.tokens.renew(connection, frame.data.token)
                await self.chats.join(connection, frame, user_id)
            case SwitchChat():
                await self.chats.switch(connection, user_id, frame.data.chatId, frame.data.chatType, frame.requestId)
            case CreateChat():
                await self.chats.create(connection, user_id, frame.data.chatType, frame.requestId)
            case Cancel():
                await self.messages.cancel(connection, frame)
            case RefreshToken():
                identity = await self.tokens.renew(connection, frame.data.token)
                expires = {"expiresAt": int(identity.expires_at * 1000)}
                connection.send(token_refreshed_frame(expires, frame.requestId))
            case ListChats():
                await self.chats.list_chats(connection, user_id, frame.data.limit, frame.requestId)
