"""Hostile and slow peers over raw sockets (issue 11): none can pin a slot, grow the gateway's memory
without bound, stall the sweep or the shutdown, or have a frame handled after its token expired.

Whether the gateway still holds a peer is read from the gateway's own fd table (``tests.support.rawws``).
"""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import pytest

from tests.gateway.conftest import address, connect, joined, refusals, still_open, until_closed, user
from tests.gateway.hostile import deadlines_env, hostile_run
from tests.support import rawws
from tests.support.client import make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess, command, free_port
from tests.support.wait import eventually

AUTH_S, SEND_S, HANDSHAKE_S = 1.0, 2.0, 1.0
BUDGET = 256 * 1024
HOSTILE_ENV: dict[str, str | int] = {
    **deadlines_env(auth_s=AUTH_S, send_s=SEND_S, handshake_s=HANDSHAKE_S, budget=BUDGET),
    "WS_MAX_FRAMES_PER_SECOND": 100,
    "WS_MAX_UNAUTHENTICATED_PER_ADDRESS": 50,
}


@pytest.fixture(scope="module")
async def hostile(module_cluster: Cluster) -> ServiceProcess:
    return await module_cluster.gateway(**HOSTILE_ENV)


def _where(gateway: ServiceProcess) -> tuple[int, int]:
    return gateway.pid, int(gateway.extra["port"])


async def _released(gateway: ServiceProcess, peers: list[rawws.RawPeer], timeout: float) -> dict[int, float]:
    pid, port = _where(gateway)
    return await rawws.released_within(pid, port, peers, timeout)


# ---------------------------------------------------------------------------- item 1: pings never read


@pytest.mark.parametrize("authenticated", [False, True])
async def test_a_ping_flood_that_is_never_read_loses_its_slot_in_time(
    hostile: ServiceProcess, authenticated: bool
) -> None:
    """uvicorn writes a pong for every ping, whatever its write buffer holds; once over the mark,
    every close waited for ever: the socket outlived the auth deadline and every keepalive."""
    host, port = "127.0.0.1", int(hostile.extra["port"])
    peer = await rawws.RawPeer.upgraded(host, port, client_address=address())
    if authenticated:
        await peer.send(rawws.text("join_chat", token=make_token(user("flood")), chatType="messages"))
    deadline = AUTH_S + 2 * SEND_S + 2  # the auth deadline, then the close: written and answered in time
    flood = asyncio.create_task(rawws.flood_pings(peer, until=time.monotonic() + deadline + 5))
    try:
        released = await _released(hostile, [peer], timeout=deadline + 5)
    finally:
        flood.cancel()
        peer.close()
    assert peer.port in released, "the gateway still holds the flooding socket"
    assert released[peer.port] <= deadline
    sentinel = await joined(hostile.extra["ws_url"], make_token(user("sentinel")))
    await still_open(sentinel)
    await sentinel.close()


# ---------------------------------------------------------------------------- item 2: bytes, not frames


async def test_a_slow_reader_is_dropped_when_its_output_passes_the_byte_budget(
    module_cluster: Cluster, hostile: ServiceProcess
) -> None:
    """The old cap counted 2000 frames: with histories of 200 KB a connection could hold 400 MB."""
    someone = user("slow")
    chat_id = await rawws.seed_chat(module_cluster.services.database_url, someone, messages=50, size=4000)
    before = await refusals(hostile.extra["http_url"])
    host, port = "127.0.0.1", int(hostile.extra["port"])
    peer = await rawws.RawPeer.upgraded(host, port, client_address=address())
    await peer.send(rawws.text("join_chat", token=make_token(someone), chatType="messages", chatId=chat_id))
    # 30 x 200 KB asked for, nothing read: the kernel's send buffer (4 MB at most) takes the first
    # twenty, the gateway's budget (256 KB) then the next one
    try:
        for _ in range(30):
            await peer.send(rawws.text("switch_chat", chatId=chat_id, chatType="messages"))
        released = await _released(hostile, [peer], timeout=SEND_S + 5)
    finally:
        peer.close()
    assert peer.port in released, "the gateway still holds the slow reader"
    after = await refusals(hostile.extra["http_url"])
    key = ("DROPPED", "output_budget")
    assert after.get(key, 0) == before.get(key, 0) + 1  # the budget dropped it, not the send deadline


# ---------------------------------------------------------------------------- item 5: unauthenticated ceiling


async def test_unauthenticated_sockets_have_a_process_wide_ceiling(module_cluster: Cluster) -> None:
    """Per address only (256), a few addresses (or any IPv6 block) filled a gateway without a token."""
    gateway = await module_cluster.gateway(
        WS_MAX_CONNECTIONS=20, WS_MAX_UNAUTHENTICATED_SHARE=0.25, WS_AUTH_TIMEOUT=30_000
    )
    url = gateway.extra["ws_url"]
    member = await joined(url, make_token(user("member")))
    idlers = [await connect(url) for _ in range(5)]  # 5 = 25 % of 20, each from an address of its own
    refused = await connect(url)
    ending = await until_closed(refused)
    assert ending.errors == ["SERVER_AT_CAPACITY"]
    assert ending.code == 1013
    counts = await refusals(gateway.extra["http_url"])
    assert counts[("SERVER_AT_CAPACITY", "unauthenticated")] == 1
    await still_open(member)
    for idler in idlers:
        await idler.close()
    admitted = await joined(url, make_token(user("after")))
    await admitted.close()
    await member.close()
    await gateway.stop()


# ---------------------------------------------------------------------------- item 6: slowloris


@pytest.mark.parametrize("how", ["silent", "dribbling"])
async def test_a_handshake_must_complete_in_time(hostile: ServiceProcess, how: str) -> None:
    """uvicorn's h11 protocol arms no timer for request headers: such sockets were open at 152 s."""
    pid, port = _where(hostile)
    peer = await rawws.RawPeer.connect("127.0.0.1", port)
    await rawws.until_held(pid, port, peer)
    dribble = None
    if how == "dribbling":
        request = rawws.upgrade_request("127.0.0.1", port, client_address=address())[:-2] + b"X-Slow: "

        async def one_byte_at_a_time() -> None:
            for byte in request + b"a" * 1000:
                if not peer.write(bytes([byte])):
                    return
                await asyncio.sleep(0.05)  # slowloris: the slow dribble is the attack

        dribble = asyncio.create_task(one_byte_at_a_time())
    try:
        released = await _released(hostile, [peer], timeout=HANDSHAKE_S + 5)
    finally:
        if dribble is not None:
            dribble.cancel()
        peer.close()
    assert peer.port in released, "the gateway still holds a socket that never completed its handshake"
    assert released[peer.port] <= HANDSHAKE_S + 2
    client = await joined(hostile.extra["ws_url"], make_token(user("after-slowloris")))
    await client.close()


# ---------------------------------------------------------------------------- item 3: sweep and SIGTERM


PATIENT_ENV: dict[str, str | int] = {
    "WS_SEND_TIMEOUT": 30_000,
    "WS_MAX_BUFFERED_BYTES": 64 * 1024 * 1024,
    "SHUTDOWN_GRACE": 1000,
    "SHUTDOWN_SPREAD": 200,
    "JWT_LEEWAY": 0,
}
"""A gateway whose send deadline (30 s) and output budget (64 MB) are far beyond the test: a peer
that does not read stays stuck in its close for the whole test, unless the close is bounded otherwise."""


@pytest.fixture
async def patient(module_cluster: Cluster) -> ServiceProcess:
    """``PATIENT_ENV`` with a sweep every 0.3 s for connections idle 1.5 s."""
    return await module_cluster.gateway(**PATIENT_ENV, WS_INACTIVE_TIMEOUT=1500, WS_CLEANUP_INTERVAL=300)


async def _stuck_reader(
    gateway: ServiceProcess, user_id: str, chat_id: str, *, token: str | None = None
) -> rawws.RawPeer:
    """A joined peer with 6 MB of history sent to it and not one byte read: past the kernel's send
    buffer (4 MB at most), every further write of the gateway to it waits."""
    peer = await rawws.RawPeer.upgraded("127.0.0.1", int(gateway.extra["port"]), client_address=address())
    await peer.send(rawws.text("join_chat", token=token or make_token(user_id), chatType="messages", chatId=chat_id))
    for _ in range(30):
        await peer.send(rawws.text("switch_chat", chatId=chat_id, chatType="messages"))
    return peer


async def test_a_stuck_peer_does_not_stop_the_sweep(module_cluster: Cluster, patient: ServiceProcess) -> None:
    """``sweep_once`` gathered every close, so one peer that does not read stopped the sweep for the
    whole gateway: an idle client stayed open long past its timeout."""
    someone = user("stuck")
    chat_id = await rawws.seed_chat(module_cluster.services.database_url, someone, messages=50, size=4000)
    stuck = await _stuck_reader(patient, someone, chat_id)
    # the scenario, not a wait for an event: the stuck peer stays silent past WS_INACTIVE_TIMEOUT (1.5 s),
    # so that a sweep (every 0.3 s) is in its unbounded close when the idle client arrives
    await asyncio.sleep(2.5)
    idle = await joined(patient.extra["ws_url"], make_token(user("idle")))
    idle_since = time.monotonic()
    try:
        ending = await until_closed(idle, timeout=10)
    finally:
        stuck.close()
    waited = time.monotonic() - idle_since
    assert ending.code == 1000, "the idle client was not swept"
    assert waited <= 1.5 + 0.3 + 2  # WS_INACTIVE_TIMEOUT + WS_CLEANUP_INTERVAL + 2 s


async def test_a_stuck_peer_does_not_hold_up_sigterm(module_cluster: Cluster, patient: ServiceProcess) -> None:
    """The drain on SIGTERM awaited a close that waited on a peer that does not read: the gateway
    ignored SIGTERM (45 s+ measured), which turns a rolling restart into SIGKILL."""
    someone = user("stuck-term")
    chat_id = await rawws.seed_chat(module_cluster.services.database_url, someone, messages=50, size=4000)
    stuck = await _stuck_reader(patient, someone, chat_id)
    calm = await joined(patient.extra["ws_url"], make_token(user("calm")))
    await still_open(calm)
    started = time.monotonic()
    patient.signal(signal.SIGTERM)
    try:
        code = await patient.wait_exit(timeout=1.0 + 5 + 10)
    finally:
        stuck.close()
    took = time.monotonic() - started
    assert code is not None, "the gateway did not exit after SIGTERM"
    assert took <= 1.0 + 5  # SHUTDOWN_GRACE + 5 s
    ending = await until_closed(calm, timeout=5)
    assert ending.code == 1012


# ---------------------------------------------------------------------------- item 10: no frame after expiry


async def test_no_frame_is_handled_after_the_token_expired(module_cluster: Cluster) -> None:
    """The expiry timer's close waits on a peer that does not read; frames sent meanwhile were
    handled with an expired token (here: a message stored and sent to the model)."""
    patient = await module_cluster.gateway(**PATIENT_ENV)
    someone = user("expired")
    chat_id = await rawws.seed_chat(module_cluster.services.database_url, someone, messages=50, size=4000)
    expires_in = 3.0
    peer = await _stuck_reader(patient, someone, chat_id, token=make_token(someone, expires_in=expires_in))
    await asyncio.sleep(expires_in + 0.5)  # the token's lifetime running out is the behaviour under test
    marker = f"after expiry {user('m')}"
    await peer.send(rawws.text("send_message", content=marker))
    key = ("UNAUTHORIZED", "token_expired")

    async def refused_twice() -> bool:
        # once by the expiry timer, once for the frame that came after it
        return (await refusals(patient.extra["http_url"])).get(key, 0) >= 2

    try:
        await eventually(refused_twice, timeout=5)
    finally:
        peer.close()
    db = await asyncpg.connect(module_cluster.services.database_url)
    try:
        stored = await db.fetchval("SELECT count(*) FROM messages WHERE content = $1", marker)
    finally:
        await db.close()
    assert stored == 0, "a message sent after the token expired was taken"


# ---------------------------------------------------------------------------- the hostile-peers run, short


async def test_hostile_run_short(module_cluster: Cluster) -> None:
    """``python -m tests.gateway.hostile`` at a small scale: every check of the run holds."""
    await module_cluster.fake_openai(FAKE_OPENAI_FIRST_TOKEN_MS=0, FAKE_OPENAI_TOKENS_PER_SECOND=0)
    await module_cluster.worker()
    report = await hostile_run(module_cluster, n=5, sentinels=2, seconds=5)
    assert report.problems == [], report


async def test_a_payload_limit_too_small_for_the_message_length_stops_start_up(module_cluster: Cluster) -> None:
    """WS_MAX_PAYLOAD must carry a WS_MAX_MESSAGE_LENGTH message in UTF-8; else start-up fails naming both."""
    env = module_cluster.base_env(WS_MAX_PAYLOAD=8192, GATEWAY_PORT=free_port())
    process = await asyncio.create_subprocess_exec(
        *command("chat-gateway"), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode != 0
    assert b"WS_MAX_PAYLOAD" in output
    assert b"WS_MAX_MESSAGE_LENGTH" in output
