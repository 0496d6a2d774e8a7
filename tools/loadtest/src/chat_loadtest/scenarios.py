"""The load scenarios by name: the original document's three, plus ``idle`` and ``burst``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Mode = Literal["rate", "closed", "idle"]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    users: int
    chats: int
    """connections per user, each joined to a chat of its own (types alternate)."""
    mode: Mode
    """``rate``: ``rate`` messages per minute in all, spread over idle connections; ``closed``: every
    connection sends its next message as soon as the last one is answered (or the rate limit's
    ``retryAfterMs`` has passed); ``idle``: joined and silent."""
    rate: float = 0.0
    duration_s: float = 60.0
    description: str = ""

    def with_overrides(self, **changes: object) -> Scenario:
        given = {key: value for key, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given)  # type: ignore[arg-type]

    @property
    def connections(self) -> int:
        return self.users * self.chats


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario(
            name="baseline",
            users=500,
            chats=2,
            mode="rate",
            rate=500,
            description="the original's base load: 500 users x 2 chats, 500 messages per minute",
        ),
        Scenario(
            name="peak",
            users=1000,
            chats=3,
            mode="rate",
            rate=1000,
            description="the original's peak: 1000 users x 3 chats (3000 connections), 1000 messages per minute",
        ),
        Scenario(
            name="stress",
            users=1500,
            chats=1,
            mode="closed",
            description="the original's stress test: 1500 users at maximum activity (closed loop, rate-limited)",
        ),
        Scenario(
            name="idle",
            users=1000,
            chats=1,
            mode="idle",
            duration_s=20,
            description="joined, silent connections: memory per connection",
        ),
        Scenario(
            name="burst",
            users=200,
            chats=1,
            mode="closed",
            duration_s=30,
            description="closed loop as fast as answers come back (run the fake model with no delay)",
        ),
    )
}
