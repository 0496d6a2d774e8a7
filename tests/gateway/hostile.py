"""Hostile-peers run (issue 11): many cheap attacks on one gateway at once, while sentinel users chat.

At the same time, over raw sockets (``tests.support.rawws``), from addresses of their own:

- ``--n`` ping flooders: upgraded, never authenticate, flood pings, never read;
- ``--n`` slow readers: authenticated, ask for their 200 KB history 30 times, never read;
- ``--n`` half-open handshakes: a TCP connection and an HTTP request sent a byte every 0.2 s;
- ``--n`` unauthenticated idlers: upgraded, then silent;

while ``--sentinels`` users keep asking questions (each answer must arrive in full: ``response_end``
content equal to its chunks) and as many idle users wait to be swept. Then a second wave of slow
readers and flooders is opened and the gateway gets SIGTERM.

It prints and checks (``HostileReport.problems`` lists what did not hold):

- the gateway's RSS growth per hostile socket, against the output budget ``WS_MAX_BUFFERED_BYTES``;
- the time each hostile socket held a socket in the gateway (read from the gateway's fd table) against
  its deadline + 2 s: ``WS_AUTH_TIMEOUT + 2 * WS_SEND_TIMEOUT`` from its connect for the unauthenticated
  ones (the auth deadline, then the close: written, then answered), ``WS_HANDSHAKE_TIMEOUT`` for the
  half-open ones, ``WS_SEND_TIMEOUT`` for the slow readers from the moment they took nothing more
  (their kernel send queue at its peak: before that the gateway is still reading their histories);
- every sweep on time: each idle user closed within ``WS_INACTIVE_TIMEOUT + WS_CLEANUP_INTERVAL`` + 2 s,
  sweeps counted on schedule and started less than a second late;
- SIGTERM completed within ``SHUTDOWN_GRACE`` + 5 s;
- every sentinel question answered in full.

Run against a cluster of its own (temporary vhost and database on the local services):

    uv run python -m tests.gateway.hostile --n 50 --sentinels 5 --seconds 20

``tests/gateway/test_hostile.py::test_hostile_run_short`` runs it at a small scale.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from tests.support import rawws
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster, isolated_cluster
from tests.support.processes import ServiceProcess
from tests.support.wait import eventually

AUTH_S, SEND_S, HANDSHAKE_S = 2.0, 3.0, 2.0
INACTIVE_S, INTERVAL_S, GRACE_S = 4.0, 1.0, 3.0
BUDGET = 256 * 1024


def deadlines_env(*, auth_s: float, send_s: float, handshake_s: float, budget: int) -> dict[str, str | int]:
    """The gateway settings a hostile peer runs into: the deadlines of authentication, of a send and
    of the handshake (seconds), and the bytes a connection may have waiting to be sent."""
    return {
        "WS_AUTH_TIMEOUT": int(auth_s * 1000),
        "WS_SEND_TIMEOUT": int(send_s * 1000),
        "WS_HANDSHAKE_TIMEOUT": int(handshake_s * 1000),
        "WS_MAX_BUFFERED_BYTES": budget,
    }


GATEWAY_ENV: dict[str, str | int] = {
    **deadlines_env(auth_s=AUTH_S, send_s=SEND_S, handshake_s=HANDSHAKE_S, budget=BUDGET),
    "WS_INACTIVE_TIMEOUT": int(INACTIVE_S * 1000),
    "WS_CLEANUP_INTERVAL": int(INTERVAL_S * 1000),
    "SHUTDOWN_GRACE": int(GRACE_S * 1000),
    "SHUTDOWN_SPREAD": 500,
    "WS_MAX_CONNECTIONS": 2000,
    "WS_RATE_LIMIT_MAX_MESSAGES": 10_000,  # the sentinels chat for the whole run
}
DEADLINES = {
    "flooder": AUTH_S + 2 * SEND_S,
    "idler": AUTH_S + 2 * SEND_S,
    "slow_reader": SEND_S,
    "half_open": HANDSHAKE_S,
}


@dataclass
class HostileReport:
    hostile_sockets: int = 0
    held_max_s: dict[str, float] = field(default_factory=dict)
    """per kind, the longest a socket was held: from its connect, or (slow readers) from the moment
    its kernel send queue stopped growing, i.e. it took nothing more."""
    held_from_open_max_s: dict[str, float] = field(default_factory=dict)
    deadline_s: dict[str, float] = field(default_factory=lambda: dict(DEADLINES))
    not_released: dict[str, int] = field(default_factory=dict)
    rss_baseline: int = 0
    rss_peak: int = 0
    rss_growth_per_hostile_socket: float = 0.0
    output_budget: int = BUDGET
    sweeps: int = 0
    sweeps_expected_at_least: int = 0
    sweep_lag_s: float = 0.0
    idle_swept_max_s: float = 0.0
    idle_swept_bound_s: float = INACTIVE_S + INTERVAL_S + 2
    idle_not_swept: int = 0
    sentinel_questions: int = 0
    sentinel_answered_in_full: int = 0
    sentinel_failures: list[str] = field(default_factory=list)
    sigterm_s: float | None = None
    sigterm_bound_s: float = GRACE_S + 5
    problems: list[str] = field(default_factory=list)

    def check(self) -> HostileReport:
        for group, held in self.held_max_s.items():
            if held > self.deadline_s[group] + 2:
                self.problems.append(f"{group}: held {held:.1f}s > deadline {self.deadline_s[group]:.1f}s + 2s")
        for group, count in self.not_released.items():
            if count:
                self.problems.append(f"{group}: {count} sockets still held at the end")
        if self.rss_growth_per_hostile_socket > self.output_budget:
            self.problems.append(
                f"RSS grew {self.rss_growth_per_hostile_socket:.0f} B per hostile socket > budget {self.output_budget}"
            )
        if self.idle_not_swept or self.idle_swept_max_s > self.idle_swept_bound_s:
            self.problems.append(
                f"sweep late: {self.idle_not_swept} idle users not swept, slowest {self.idle_swept_max_s:.1f}s"
            )
        if self.sweeps < self.sweeps_expected_at_least or self.sweep_lag_s > 1.0:
            self.problems.append(
                f"sweeps: {self.sweeps} run (>= {self.sweeps_expected_at_least}), lag {self.sweep_lag_s}s"
            )
        if self.sentinel_answered_in_full != self.sentinel_questions or not self.sentinel_questions:
            self.problems.append(f"sentinels: {self.sentinel_failures[:5]}")
        if self.sigterm_s is None or self.sigterm_s > self.sigterm_bound_s:
            self.problems.append(f"SIGTERM took {self.sigterm_s}s > {self.sigterm_bound_s}s")
        return self


def _address() -> str:
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2]}"


async def _metric(http_url: str, name: str) -> float:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{http_url}/metrics")).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


class _Attack:
    def __init__(self, gateway: ServiceProcess, watch: rawws.SocketWatch) -> None:
        self.gateway = gateway
        self.watch = watch
        self.host, self.port = "127.0.0.1", int(gateway.extra["port"])
        self.peers: list[rawws.RawPeer] = []
        self.tasks: list[asyncio.Task[Any]] = []

    async def _upgraded(self, group: str) -> rawws.RawPeer:
        peer = await rawws.RawPeer.upgraded(self.host, self.port, client_address=_address())
        self.peers.append(peer)
        self.watch.add(group, peer)
        return peer

    async def flooder(self) -> None:
        peer = await self._upgraded("flooder")
        self.tasks.append(asyncio.create_task(rawws.flood_pings(peer, until=time.monotonic() + 30)))

    async def idler(self) -> None:
        await self._upgraded("idler")

    async def slow_reader(self, user_id: str, chat_id: str) -> None:
        peer = await self._upgraded("slow_reader")
        with contextlib.suppress(OSError, TimeoutError):
            await peer.send(rawws.text("join_chat", token=make_token(user_id), chatType="messages", chatId=chat_id))
            for _ in range(30):
                await peer.send(rawws.text("switch_chat", chatId=chat_id, chatType="messages"))

    async def half_open(self) -> None:
        peer = await rawws.RawPeer.connect(self.host, self.port)
        self.peers.append(peer)
        await rawws.until_held(self.gateway.pid, self.port, peer)
        self.watch.add("half_open", peer)
        request = rawws.upgrade_request(self.host, self.port, client_address=_address())[:-2]

        async def dribble() -> None:
            for byte in request + b"X-Slow: " + b"a" * 1000:
                if not peer.write(bytes([byte])):
                    return
                await asyncio.sleep(0.2)  # slowloris: the slow dribble is the attack

        self.tasks.append(asyncio.create_task(dribble()))

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for peer in self.peers:
            peer.close()


def _held(report: HostileReport, watch: rawws.SocketWatch) -> None:
    for port, group in watch.groups.items():
        if port in watch.released:
            # a slow reader's deadline runs once it takes nothing more (the gateway may take a while
            # to read its 30 histories of 200 KB from PostgreSQL before that)
            held = watch.held_after_stall(port) if group == "slow_reader" else watch.released[port]
            assert held is not None
            report.held_max_s[group] = round(max(report.held_max_s.get(group, 0.0), held), 2)
            report.held_from_open_max_s[group] = round(
                max(report.held_from_open_max_s.get(group, 0.0), watch.released[port]), 2
            )
        else:
            report.not_released[group] = report.not_released.get(group, 0) + 1
    for group in DEADLINES:
        report.held_max_s.setdefault(group, 0.0)
        report.not_released.setdefault(group, 0)


async def _until_released(watch: rawws.SocketWatch, timeout: float) -> None:
    """Wait (at most ``timeout`` s) until the gateway let go of every watched socket; what it still
    holds then is counted by ``_held``."""
    with contextlib.suppress(AssertionError):
        await eventually(lambda: not watch.pending(), timeout=timeout)


async def _sentinel(url: str, report: HostileReport, stop: asyncio.Event) -> None:
    client = await ChatClient.connect(url, additional_headers={"X-Forwarded-For": _address()})
    try:
        joined = await client.join(make_token(f"sentinel-{uuid.uuid4().hex[:8]}"))
        assert joined["type"] == "chat_joined", joined
        while not stop.is_set():
            report.sentinel_questions += 1
            answer = await client.ask("What must a valid contract contain?", timeout=30)
            if answer.end is not None and answer.end["content"] == answer.text:
                report.sentinel_answered_in_full += 1
            else:
                report.sentinel_failures.append(str(answer.error or "incomplete"))
            await asyncio.sleep(0.2)  # a user reads the answer before asking again
    except (ConnectionClosed, TimeoutError, AssertionError) as exc:
        report.sentinel_failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        await client.close()


async def _idle_user(url: str) -> float | None:
    """Join, stay silent; the seconds until the sweep closed the connection (None if it did not)."""
    client = await ChatClient.connect(url, additional_headers={"X-Forwarded-For": _address()})
    await client.join(make_token(f"idle-{uuid.uuid4().hex[:8]}"))
    since = time.monotonic()
    try:
        while True:
            await client.recv(INACTIVE_S + INTERVAL_S + 10)
    except ConnectionClosed as closed:
        return time.monotonic() - since if closed.rcvd is not None and closed.rcvd.code == 1000 else None
    except TimeoutError:
        return None
    finally:
        await client.close()


async def hostile_run(cluster: Cluster, *, n: int, sentinels: int, seconds: float) -> HostileReport:
    """One run against a gateway of its own in ``cluster`` (which must have a worker for the sentinels)."""
    report = HostileReport()
    gateway = await cluster.gateway(**GATEWAY_ENV)
    url, http_url = gateway.extra["ws_url"], gateway.extra["http_url"]
    database_url = cluster.services.database_url
    users = [f"slow-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    chats = [await rawws.seed_chat(database_url, u, messages=50, size=4000) for u in users]

    stop = asyncio.Event()
    sentinel_tasks = [asyncio.create_task(_sentinel(url, report, stop)) for _ in range(sentinels)]
    idle_tasks = [asyncio.create_task(_idle_user(url)) for _ in range(sentinels)]
    # the baseline once the sentinels and the idle users are in (one that cannot connect reports it itself)
    with contextlib.suppress(AssertionError):
        await eventually(lambda: len(rawws.held_ports(gateway.pid, int(gateway.extra["port"]))) >= 2 * sentinels)
    memory = rawws.RssPeak(gateway.pid, every=0.1)
    report.rss_baseline = memory.baseline
    sweeps_before, started = await _metric(http_url, "chat_gateway_sweeps_total"), time.monotonic()
    sampler = asyncio.create_task(memory.run())
    watch = rawws.SocketWatch(gateway.pid, int(gateway.extra["port"]))
    watcher = asyncio.create_task(watch.run())
    attack = _Attack(gateway, watch)
    try:
        await asyncio.gather(
            *(attack.flooder() for _ in range(n)),
            *(attack.idler() for _ in range(n)),
            *(attack.half_open() for _ in range(n)),
            *(attack.slow_reader(u, c) for u, c in zip(users, chats, strict=True)),
        )
        report.hostile_sockets = 4 * n
        await _until_released(watch, timeout=max(seconds, max(DEADLINES.values()) + 5))
        idle = await asyncio.gather(*idle_tasks)
        swept = [t for t in idle if t is not None]
        report.idle_not_swept = len(idle) - len(swept)
        report.idle_swept_max_s = round(max(swept, default=0.0), 2)
        report.sweeps = int(await _metric(http_url, "chat_gateway_sweeps_total") - sweeps_before)
        report.sweeps_expected_at_least = int((time.monotonic() - started) / INTERVAL_S) - 2
        report.sweep_lag_s = await _metric(http_url, "chat_gateway_sweep_lag_seconds")
        report.rss_peak = memory.peak
        growth = report.rss_peak - report.rss_baseline
        report.rss_growth_per_hostile_socket = round(max(0, growth) / report.hostile_sockets, 1)
    finally:
        stop.set()
        sampler.cancel()
        attack.close()
    await asyncio.gather(*sentinel_tasks)
    _held(report, watch)

    # a second wave, stuck when the gateway is told to stop
    second = _Attack(gateway, watch)
    try:
        await asyncio.gather(
            *(second.flooder() for _ in range(n)),
            *(second.slow_reader(u, c) for u, c in zip(users, chats, strict=True)),
        )
        begun = time.monotonic()
        gateway.signal(signal.SIGTERM)
        if await gateway.wait_exit(timeout=GRACE_S + 30) is not None:
            report.sigterm_s = round(time.monotonic() - begun, 2)
    finally:
        watcher.cancel()
        second.close()
    return report.check()


async def _standalone(args: argparse.Namespace) -> HostileReport:
    from tests.support.services import session_services

    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    async with session_services(redis=False) as services, isolated_cluster(services, log_dir) as cluster:
        await cluster.fake_openai(FAKE_OPENAI_FIRST_TOKEN_MS=0, FAKE_OPENAI_TOKENS_PER_SECOND=0)
        await cluster.worker()
        return await hostile_run(cluster, n=args.n, sentinels=args.sentinels, seconds=args.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="sockets of each hostile kind")
    parser.add_argument("--sentinels", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--log-dir", default="/tmp/hostile-gateway-logs")
    args = parser.parse_args()
    report = asyncio.run(_standalone(args))
    print(json.dumps(asdict(report), indent=2))
    raise SystemExit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
