"""Everything a connection handler needs, created by the app's lifespan and owned by it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from chat_common.settings import Settings
from chat_common.store import ChatStore
from chat_gateway.admission import AdmissionStore
from chat_gateway.auth import TokenVerifier
from chat_gateway.broker import GatewayBroker
from chat_gateway.connection import OutputLimits
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.registry import ConnectionRegistry
from chat_gateway.replies import ReplyRouter


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    verifier: TokenVerifier
    store: ChatStore
    broker: GatewayBroker
    admission: AdmissionStore
    registry: ConnectionRegistry
    metrics: GatewayMetrics
    router: ReplyRouter
    started: float = field(default_factory=time.time)
    accepting: bool = True
    unauthenticated: Counter[str] = field(default_factory=Counter)
    """sockets per client address that have not sent ``join_chat`` yet."""
    unauthenticated_total: int = 0
    """sockets of this process that have not sent ``join_chat`` yet (``WS_MAX_UNAUTHENTICATED_SHARE``)."""
    closing: set[asyncio.Task[None]] = field(default_factory=set)
    """closes started by the sweep, each bounded by ``WS_SEND_TIMEOUT``."""
    output_limits: OutputLimits = field(init=False)

    def __post_init__(self) -> None:
        self.output_limits = OutputLimits(
            max_buffered_bytes=self.settings.ws_max_buffered_bytes,
            send_timeout_s=self.settings.ws_send_timeout / 1000,
        )
