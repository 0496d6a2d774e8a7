"""The gateway's components wired from the settings: each gets what it uses; the lifespan owns them all.

``build`` creates nothing that connects: the lifespan opens the pool, the broker and the admission
store first, hands them in, and closes them after the components are done with them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from chat_common.group_commit import GroupCommit
from chat_common.settings import GatewaySettings
from chat_common.store import DATA_ERRORS, ChatStore, QuestionRow
from chat_gateway.admission import AdmissionStore
from chat_gateway.auth import TokenVerifier
from chat_gateway.broker import GatewayBroker
from chat_gateway.chats import ChatLimits, Chats
from chat_gateway.connection import OutputLimits
from chat_gateway.door import Door, DoorLimits
from chat_gateway.handlers import FrameHandler
from chat_gateway.inflight import InFlight
from chat_gateway.messages import MessageLimits, Messages
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.registry import ConnectionRegistry
from chat_gateway.replies import ReplyRouter
from chat_gateway.session import Sessions
from chat_gateway.tokens import TokenKeeper


@dataclass(slots=True)
class GatewayState:
    """What the HTTP API, the sweep and the drain read; the components that serve connections."""

    settings: GatewaySettings
    broker: GatewayBroker
    admission: AdmissionStore
    registry: ConnectionRegistry
    metrics: GatewayMetrics
    door: Door
    inflight: InFlight
    router: ReplyRouter
    sessions: Sessions
    questions: GroupCommit[QuestionRow, None]
    """the writer of the questions (``run`` by the lifespan)."""
    started: float = field(default_factory=time.time)
    closing: set[asyncio.Task[None]] = field(default_factory=set)
    """closes started by the sweep, each bounded by ``WS_SEND_TIMEOUT``."""


def build(
    settings: GatewaySettings,
    verifier: TokenVerifier,
    store: ChatStore,
    broker: GatewayBroker,
    admission: AdmissionStore,
) -> GatewayState:
    registry, metrics = ConnectionRegistry(), GatewayMetrics(window_s=settings.health_window // 1000)
    inflight = InFlight(metrics, broker.publish_control, request_timeout_s=settings.request_timeout_s)
    tokens = TokenKeeper(
        verifier,
        admission,
        registry,
        metrics,
        leeway_s=settings.jwt_leeway,
        max_connections_per_user=settings.ws_max_connections_per_user,
    )
    questions = GroupCommit(store.add_user_messages, data_errors=DATA_ERRORS)
    messages = Messages(store, questions, admission, broker, inflight, _message_limits(settings))
    chats = Chats(store, admission, messages, _chat_limits(settings))
    door = Door(_door_limits(settings))
    sessions = Sessions(
        door=door,
        registry=registry,
        handler=FrameHandler(tokens, chats, messages, metrics, busy_retry_ms=settings.busy_retry_after),
        tokens=tokens,
        inflight=inflight,
        admission=admission,
        broker=broker,
        metrics=metrics,
        output=OutputLimits(
            max_buffered_bytes=settings.ws_max_buffered_bytes, send_timeout_s=settings.ws_send_timeout_s
        ),
        auth_timeout_s=settings.ws_auth_timeout_s,
        max_frames_per_second=settings.ws_max_frames_per_second,
    )
    return GatewayState(
        settings=settings,
        broker=broker,
        admission=admission,
        registry=registry,
        metrics=metrics,
        door=door,
        inflight=inflight,
        router=ReplyRouter(registry, inflight, broker.publish_control),
        sessions=sessions,
        questions=questions,
    )


def _message_limits(settings: GatewaySettings) -> MessageLimits:
    return MessageLimits(
        max_length=settings.ws_max_message_length,
        per_window=settings.ws_rate_limit_max_messages,
        window_ms=settings.ws_rate_limit_window,
        request_timeout_ms=settings.request_timeout,
        max_tokens=settings.ws_max_tokens,
        reply_to=settings.instance_id,
    )


def _chat_limits(settings: GatewaySettings) -> ChatLimits:
    return ChatLimits(
        creates_per_minute=settings.ws_chat_creates_per_minute,
        history_reads_per_minute=settings.ws_history_reads_per_minute,
        history_limit=settings.history_limit,
    )


def _door_limits(settings: GatewaySettings) -> DoorLimits:
    return DoorLimits(
        max_connections=settings.ws_max_connections,
        max_unauthenticated=settings.max_unauthenticated,
        max_unauthenticated_per_address=settings.ws_max_unauthenticated_per_address,
        allowed_origins=tuple(settings.ws_allowed_origins),
    )
