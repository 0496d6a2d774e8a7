"""Which sockets get in: the origin, the process's capacity, a drain, and the quotas of sockets not yet authenticated.

A socket that has not sent ``join_chat`` counts against its address (``WS_MAX_UNAUTHENTICATED_PER_ADDRESS``)
and against the process (``WS_MAX_UNAUTHENTICATED_SHARE`` of ``WS_MAX_CONNECTIONS``) from ``waiting``
until it authenticates or goes away: behind IPv6 or a botnet the per-address cap does nothing, and
the process-wide one keeps most of the capacity for clients that authenticate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from chat_common.errors import ErrorCode
from chat_gateway.refusals import Refusal


@dataclass(frozen=True, slots=True, kw_only=True)
class DoorLimits:
    max_connections: int
    max_unauthenticated: int
    max_unauthenticated_per_address: int
    allowed_origins: tuple[str, ...] = ()
    """empty: any origin."""


class Door:
    def __init__(self, limits: DoorLimits) -> None:
        self.limits = limits
        self.accepting = True
        """False from the start of a drain: new sockets are refused ``SERVER_AT_CAPACITY``."""
        self.unauthenticated: Counter[str] = Counter()
        """sockets per client address that have not sent ``join_chat`` yet."""
        self.unauthenticated_total = 0

    def origin_allowed(self, origin: str) -> bool:
        return not self.limits.allowed_origins or origin in self.limits.allowed_origins

    def refusal(self, address: str, connections: int) -> Refusal | None:
        """Why a new socket from ``address`` is turned away now, with ``connections`` open (None: it may wait
        for its ``join_chat``)."""
        if not self.accepting:
            return Refusal(ErrorCode.SERVER_AT_CAPACITY, reason="shutting_down")
        if connections >= self.limits.max_connections:
            return Refusal(ErrorCode.SERVER_AT_CAPACITY, reason="capacity")
        if self.unauthenticated[address] >= self.limits.max_unauthenticated_per_address:
            return Refusal(
                ErrorCode.TOO_MANY_CONNECTIONS,
                "Too many connections from this address waiting to authenticate",
                reason="per_address",
            )
        if self.unauthenticated_total >= self.limits.max_unauthenticated:
            return Refusal(ErrorCode.SERVER_AT_CAPACITY, reason="unauthenticated")
        return None

    def wait(self, address: str) -> None:
        """A socket from ``address`` waits for its ``join_chat`` (until ``admitted``)."""
        self.unauthenticated[address] += 1
        self.unauthenticated_total += 1

    def admitted(self, address: str) -> None:
        """The socket ``wait`` counted authenticated or went away."""
        self.unauthenticated_total -= 1
        self.unauthenticated[address] -= 1
        if self.unauthenticated[address] <= 0:
            del self.unauthenticated[address]
