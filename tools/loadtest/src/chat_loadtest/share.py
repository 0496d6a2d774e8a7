"""The work of one generator process: its share of the users, from connecting to closing.

The parent steers every share through three phases with events: connect and join (then report
``ready``), run the load when ``go`` is set (then report ``loaded``), close everything when
``release`` is set (then report ``done`` with the samples). Progress counters go up every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from chat_loadtest.scenarios import Scenario
from chat_loadtest.session import SimConnection
from chat_loadtest.stats import Recorder


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    scenario: Scenario
    urls: tuple[str, ...]
    """gateway WebSocket URLs: connection ``n`` of the run goes to ``urls[n % len(urls)]``."""
    secret: str
    audience: str | None = None
    issuer: str | None = None
    user_prefix: str = "load"
    processes: int = 1
    connect_concurrency: int = 200
    connect_timeout: float = 30.0
    answer_timeout: float = 130.0
    drain_s: float = 30.0
    warmup_s: float = 0.0
    """seconds of load before the measured window (the load runs ``warmup_s + duration_s``)."""

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def load_s(self) -> float:
        return self.warmup_s + self.scenario.duration_s


@dataclass(frozen=True, kw_only=True)
class Share:
    index: int
    first_user: int
    users: int
    rate: float
    """messages per minute this process sends (``rate`` mode)."""


class Channel(Protocol):
    def put(self, item: tuple[str, int, dict[str, Any]]) -> None: ...


class Gate(Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...


def make_token(config: RunConfig, user_id: str) -> str:
    claims: dict[str, Any] = {"sub": user_id, "exp": int(time.time() + config.load_s + 3600)}
    if config.audience:
        claims["aud"] = config.audience
    if config.issuer:
        claims["iss"] = config.issuer
    return jwt.encode(claims, config.secret, algorithm="HS256")


async def run_share(config: RunConfig, share: Share, channel: Channel, go: Gate, release: Gate) -> None:
    rec = Recorder()
    scenario = config.scenario
    connections: list[SimConnection] = []
    for user in range(share.first_user, share.first_user + share.users):
        token = make_token(config, f"{config.user_prefix}-{user}")
        for chat in range(scenario.chats):
            chat_type = "documents" if (user + chat) % 2 else "messages"
            url = config.urls[(user * scenario.chats + chat) % len(config.urls)]
            connections.append(SimConnection(url, token, chat_type, rec, answer_timeout=config.answer_timeout))
    progress = asyncio.create_task(_report_progress(rec, share.index, channel))
    try:
        gate = asyncio.Semaphore(config.connect_concurrency)

        async def open_one(connection: SimConnection) -> None:
            async with gate:
                await connection.open_and_join(join_timeout=config.connect_timeout)

        await asyncio.gather(*(open_one(c) for c in connections))
        channel.put(("ready", share.index, rec.counts()))
        await asyncio.to_thread(go.wait)
        alive = [c for c in connections if c.alive]
        if scenario.mode == "closed":
            await _closed_loop(alive, config.load_s, config.drain_s)
        elif scenario.mode == "rate":
            await _at_rate(alive, share.rate, config.load_s, config.drain_s, rec)
        else:
            await asyncio.sleep(config.load_s)
        channel.put(("loaded", share.index, rec.counts()))
        await asyncio.to_thread(release.wait)
        closing = asyncio.Semaphore(config.connect_concurrency)

        async def close_one(connection: SimConnection) -> None:
            async with closing:
                await connection.close()

        await asyncio.gather(*(close_one(c) for c in connections))
    finally:
        progress.cancel()
    channel.put(("done", share.index, rec.to_dict()))


async def _report_progress(rec: Recorder, index: int, channel: Channel) -> None:
    while True:
        await asyncio.sleep(1.0)
        channel.put(("progress", index, rec.counts()))


async def _finish(tasks: set[asyncio.Task[Any]], deadline: float, drain_s: float) -> None:
    """Let what is in flight finish ``drain_s`` seconds past the deadline, then cancel the rest."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()) + drain_s)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=5)


async def _closed_loop(connections: list[SimConnection], duration_s: float, drain_s: float) -> None:
    deadline = time.monotonic() + duration_s

    async def loop(connection: SimConnection) -> None:
        # spread the first sends over a second so that thousands do not start in one tick
        await asyncio.sleep(random.random())  # noqa: S311 - jitter, not security
        while connection.alive and time.monotonic() < deadline:
            outcome = await connection.ask()
            if outcome.kind in ("answered", "incomplete", "lost"):
                continue
            wait_s = (outcome.retry_after_ms or 100) / 1000
            await asyncio.sleep(max(0.0, min(wait_s, deadline - time.monotonic())))

    tasks = {asyncio.create_task(loop(c)) for c in connections}
    await _finish(tasks, deadline, drain_s)


async def _at_rate(
    connections: list[SimConnection], rate: float, duration_s: float, drain_s: float, rec: Recorder
) -> None:
    start = time.monotonic()
    deadline = start + duration_s
    tasks: set[asyncio.Task[Any]] = set()
    if rate > 0 and connections:
        ring = deque(random.sample(connections, len(connections)))
        interval = 60.0 / rate
        for tick in range(int(duration_s / interval) + 1):
            due = start + tick * interval
            if due >= deadline:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            chosen = _next_idle(ring)
            if chosen is None:
                rec.skipped_busy += 1
                continue
            chosen.busy = True  # taken now, before its task runs
            task = asyncio.create_task(chosen.ask())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    with contextlib.suppress(Exception):
        await _finish(set(tasks), deadline, drain_s)


def _next_idle(ring: deque[SimConnection]) -> SimConnection | None:
    for _ in range(len(ring)):
        candidate = ring[0]
        ring.rotate(-1)
        if candidate.alive and not candidate.busy:
            return candidate
    return None
