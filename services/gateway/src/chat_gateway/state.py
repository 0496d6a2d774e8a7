"""Everything a connection handler needs, created by the app's lifespan and owned by it."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from chat_common.settings import Settings
from chat_common.store import ChatStore
from chat_gateway.admission import AdmissionStore
from chat_gateway.auth import TokenVerifier
from chat_gateway.broker import GatewayBroker
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
