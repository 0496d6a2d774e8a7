"""SPEC §2's refusals over real sockets, one gateway with small limits: the error code, the close
code, the connection staying open where the spec says so, and the slot or budget coming back."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import jwt
import pytest

from tests.gateway.conftest import (
    address,
    connect,
    joined,
    refusals,
    still_open,
    until_closed,
    user,
)
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess
from tests.support.wait import eventually, timed

LIMITS = {
    "WS_MAX_CONNECTIONS_PER_USER": 2,
    "WS_RATE_LIMIT_MAX_MESSAGES": 3,
    "WS_RATE_LIMIT_WINDOW": 2000,
    "WS_MAX_PAYLOAD": 1024,
    "WS_MAX_MESSAGE_LENGTH": 40,
    "WS_AUTH_TIMEOUT": 800,
    "WS_MAX_UNAUTHENTICATED_PER_ADDRESS": 3,
    "JWT_LEEWAY": 0,
    "WS_MAX_TOKENS": 5,
    "WS_PING_INTERVAL": 500,
    "WS_MAX_FRAMES_PER_SECOND": 50,
}


@pytest.fixture(scope="module")
async def limited(module_cluster: Cluster) -> ServiceProcess:
    return await module_cluster.gateway(**LIMITS)


@pytest.fixture
def url(limited: ServiceProcess) -> str:
    return limited.extra["ws_url"]


# ---------------------------------------------------------------------------- connections per user


async def test_too_many_connections_for_user_and_the_slot_comes_back(url: str) -> None:
    token = make_token(user("per-user"))
    first, second = await joined(url, token), await joined(url, token)
    third = await connect(url)
    await third.send("join_chat", {"token": token, "chatType": "messages"}, requestId="j3")
    ending = await until_closed(third)
    assert ending.errors == ["TOO_MANY_CONNECTIONS"]
    assert ending.frames[0]["data"]["message"] == "Too many connections for user"
    assert ending.frames[0]["requestId"] == "j3"
    assert ending.code == 1008
    await still_open(first)
    await still_open(second)

    await first.close()  # a clean close gives the slot back
    replacement = await joined(url, token)
    second.ws.transport.abort()  # so does a dropped TCP connection

    async def admitted() -> bool:
        client = await connect(url)
        frame = await client.join(token)
        await client.close()
        return frame["type"] == "chat_joined"

    await eventually(admitted, timeout=5)
    await replacement.close()


async def test_unauthenticated_sockets_are_capped_per_address(url: str) -> None:
    crowded, other = address(), address()
    waiting = [await connect(url, client_address=crowded) for _ in range(3)]
    await asyncio.gather(*(still_unrefused(client) for client in waiting))
    refused = await connect(url, client_address=crowded)
    ending = await until_closed(refused)
    assert ending.errors == ["TOO_MANY_CONNECTIONS"]
    assert "address" in ending.frames[0]["data"]["message"]
    assert ending.code == 1008
    # another address is not affected
    elsewhere = await joined(url, make_token(user("other-address")), client_address=other)
    # once one of the waiting sockets authenticates, the address has room again
    assert (await waiting[0].join(make_token(user("crowded"))))["type"] == "chat_joined"
    admitted = await connect(url, client_address=crowded)
    assert (await admitted.join(make_token(user("crowded"))))["type"] == "chat_joined"
    for client in [*waiting, admitted, elsewhere]:
        await client.close()


async def still_unrefused(client: ChatClient) -> None:
    """Nothing arrives on a socket waiting to authenticate (it is neither refused nor closed)."""
    with pytest.raises(TimeoutError):
        await client.recv(timeout=0.1)


async def test_a_dead_peer_is_dropped_by_protocol_pings_and_its_slot_freed(url: str) -> None:
    token = make_token(user("dead-peer"))
    silent, alive = await joined(url, token), await joined(url, token)
    silent.ws.transport.pause_reading()  # TCP stays up, but pings go unanswered: a vanished peer
    started = time.monotonic()

    async def slot_free() -> bool:
        client = await connect(url)
        frame = await client.join(token)
        await client.close()
        return frame["type"] == "chat_joined"

    waited = await timed(slot_free, timeout=5, interval=0.1)
    assert time.monotonic() - started < 4  # WS_PING_INTERVAL=500: ping, then 500 ms for the pong
    await still_open(alive)  # a peer that answers its pings stays
    assert waited > 0.3
    silent.ws.transport.abort()
    await alive.close()


# ---------------------------------------------------------------------------- authentication


async def test_no_join_chat_within_the_auth_deadline(url: str) -> None:
    client = await connect(url)
    opened = time.monotonic()
    ending = await until_closed(client)
    waited = time.monotonic() - opened
    assert ending.errors == ["UNAUTHORIZED"]
    assert ending.code == 1008
    assert 0.75 <= waited < 3.0  # WS_AUTH_TIMEOUT=800


async def test_first_frame_must_be_join_chat(url: str) -> None:
    client = await connect(url)
    await client.send("ping", requestId=7)
    ending = await until_closed(client)
    assert ending.errors == ["UNAUTHORIZED"]
    assert ending.frames[0]["requestId"] == 7
    assert ending.code == 1008


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(make_token("forger", secret="not-the-secret-but-just-as-long-as-it"), id="forged"),
        pytest.param(make_token("late", expires_in=-30), id="expired"),
        pytest.param(jwt.encode({"sub": "noexp"}, "test-secret-that-is-long-enough-for-hs256"), id="no-exp"),
        pytest.param(jwt.encode({"sub": "none", "exp": int(time.time()) + 600}, None, algorithm="none"), id="alg-none"),
        pytest.param(make_token("early", nbf=int(time.time()) + 600), id="not-yet-valid"),
        pytest.param("not.a.jwt", id="malformed"),
        pytest.param(make_token("nul\x00user"), id="sub-with-nul"),
        pytest.param(make_token("alice\n2026-01-01 INFO forged log line"), id="sub-with-line-break"),
    ],
)
async def test_bad_tokens_are_refused(url: str, token: str) -> None:
    client = await connect(url)
    await client.send("join_chat", {"token": token, "chatType": "messages"})
    ending = await until_closed(client)
    assert ending.errors == ["UNAUTHORIZED"]
    assert ending.code == 1008


async def test_expiring_token_closes_the_connection_at_expiry(url: str) -> None:
    someone = user("expiry")
    token = make_token(someone, expires_in=2)
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    client = await joined(url, token)
    ending = await until_closed(client, timeout=5)
    assert ending.errors == ["UNAUTHORIZED"]
    assert ending.frames[-1]["data"]["message"] == "Unauthorized: token expired"
    assert ending.code == 1008
    assert expires_at - 0.05 <= ending.at <= expires_at + 1.5  # at expiry (JWT_LEEWAY=0), not a sweep later
    # the slot came back: the user can hold its two connections again
    fresh = make_token(someone)
    again = [await joined(url, fresh), await joined(url, fresh)]
    for client in again:
        await client.close()


async def test_refresh_token_keeps_the_connection_open(url: str) -> None:
    someone = user("refresh")
    token = make_token(someone, expires_in=2)
    expires_at = jwt.decode(token, options={"verify_signature": False})["exp"]
    client = await joined(url, token)
    await client.send("refresh_token", {"token": make_token(someone, expires_in=60)}, requestId="r")
    refreshed = await client.recv()
    assert refreshed["type"] == "token_refreshed"
    assert refreshed["requestId"] == "r"
    assert refreshed["data"]["expiresAt"] > (expires_at + 50) * 1000
    await asyncio.sleep(max(0.0, expires_at + 0.8 - time.time()))
    await still_open(client)

    # a token of another user is refused, and that ends the connection
    await client.send("refresh_token", {"token": make_token(user("someone-else"))})
    ending = await until_closed(client)
    assert ending.errors == ["UNAUTHORIZED"]
    assert ending.code == 1008


# ---------------------------------------------------------------------------- messages


async def test_rate_limit_is_per_user_accurate_and_the_budget_returns(url: str) -> None:
    token = make_token(user("rate"))
    first, second = await joined(url, token), await joined(url, token)
    await first.send("send_message", {"content": "one"})
    accepted_at = time.monotonic()
    assert (await first.recv_type("message_accepted"))["type"] == "message_accepted"
    for content in ("two", "three"):
        await second.send("send_message", {"content": content})
        await second.recv_type("message_accepted")

    await first.send("send_message", {"content": "four"}, requestId="r4")
    limited = await first.recv_type("error")
    assert limited["data"]["code"] == "RATE_LIMITED"
    assert limited["requestId"] == "r4"
    retry_ms = limited["data"]["retryAfterMs"]
    expected_ms = 2000 - (time.monotonic() - accepted_at) * 1000
    # the client's view lags the server's by the two one-way latencies (a few ms; more on a busy box)
    assert expected_ms - 100 <= retry_ms <= expected_ms + 250, (retry_ms, expected_ms)
    await still_open(first)  # RATE_LIMITED leaves the connection open

    # counted across the user's connections; refused messages do not use up the budget
    await asyncio.sleep(max(0.0, retry_ms / 1000 - 0.6))
    await second.send("send_message", {"content": "five"})
    early = await second.recv_type("error")
    assert early["data"]["code"] == "RATE_LIMITED"
    assert 0 < early["data"]["retryAfterMs"] <= 650
    await asyncio.sleep(early["data"]["retryAfterMs"] / 1000 + 0.02)
    await second.send("send_message", {"content": "six"})
    assert (await second.recv_type("message_accepted", "error"))["type"] == "message_accepted"
    await first.close()
    await second.close()


async def test_a_frame_flood_is_dropped_with_rate_limited_and_the_connection_stays(url: str) -> None:
    client = await joined(url, make_token(user("flood")))
    started = time.monotonic()
    for index in range(300):  # WS_MAX_FRAMES_PER_SECOND=50: bursts of 100
        await client.send("ping", requestId=index)
    sending_s = time.monotonic() - started
    assert sending_s < 3, "too slow to flood: the test would prove nothing"
    answers: list[dict[str, object]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            answers.append(await client.recv(timeout=1.0))
    pongs = [a for a in answers if a["type"] == "pong"]
    limited = [a for a in answers if a["type"] == "error"]
    # the burst, plus what the bucket refilled while the frames arrived (+1 s of slack for arrival)
    assert 100 <= len(pongs) <= 100 + 50 * (sending_s + 1), (len(pongs), sending_s)
    assert 1 <= len(limited) <= 1 + sending_s + 1  # told about once a second, not once per dropped frame
    data = limited[0]["data"]
    assert isinstance(data, dict)
    assert data["code"] == "RATE_LIMITED"
    assert 0 < data["retryAfterMs"] <= 20
    await still_open(client)
    await client.close()


async def test_message_too_long_keeps_the_connection_open(
    url: str, limited: ServiceProcess, db: asyncpg.Connection
) -> None:
    client = await joined(url, make_token(user("long")))
    await client.send("send_message", {"content": "x" * 41}, requestId="long")
    error = await client.recv()
    assert error["type"] == "error"
    assert error["data"]["code"] == "MESSAGE_TOO_LONG"
    assert error["requestId"] == "long"
    await still_open(client)
    # the content is normalised (control characters removed, Unicode NFC) before it is stored ...
    content = "x" * 19 + "\x00\x07\x1b" + "e\u0301" * 8 + "\n"
    await client.send("send_message", {"content": content})
    accepted = await client.recv_type("message_accepted", "error")
    assert accepted["type"] == "message_accepted", accepted
    stored = await db.fetchval("SELECT content FROM messages WHERE id = $1", accepted["data"]["messageId"])
    assert stored == "x" * 19 + "\u00e9" * 8 + "\n"
    # ... but the limit counts the characters the user sent: 53 here, 40 once normalised
    await client.send("send_message", {"content": "x" * 29 + "\x00\x07\x1b" + "e\u0301" * 10 + "\n"})
    assert (await client.recv_type("message_accepted", "error"))["data"]["code"] == "MESSAGE_TOO_LONG"
    await client.close()


async def test_the_length_limit_counts_what_was_sent_not_what_normalisation_made_of_it(url: str) -> None:
    """U+0958 is one character that NFC turns into two: 40 of them were refused as 80 (issue 11)."""
    client = await joined(url, make_token(user("nfc")))
    await client.send("send_message", {"content": "\u0958" * 40})  # WS_MAX_MESSAGE_LENGTH=40
    accepted = await client.recv_type("message_accepted", "error")
    assert accepted["type"] == "message_accepted", accepted
    await client.close()


async def test_invalid_frames_keep_the_connection_open(url: str) -> None:
    client = await joined(url, make_token(user("invalid")))
    for frame in ("not json", "[1, 2]", '{"type": "launch_missiles", "requestId": "x"}', '{"type": "send_message"}'):
        await client.ws.send(frame)
        error = await client.recv()
        assert error["data"]["code"] == "INVALID_MESSAGE", (frame, error)
    await client.ws.send(b"\x00\x01binary")
    assert (await client.recv())["data"]["code"] == "INVALID_MESSAGE"
    await still_open(client)
    await client.close()


async def test_text_that_is_not_utf8_fails_the_connection(url: str) -> None:
    client = await joined(url, make_token(user("utf8")))
    await client.ws.send(b'{"type":"ping","x":"\xff"}', text=True)
    ending = await until_closed(client)
    assert ending.errors == ["INVALID_MESSAGE"]
    assert ending.code == 1007  # RFC 6455 §8.1
    assert ending.reason == "INVALID_MESSAGE"


async def test_answers_are_capped_at_ws_max_tokens(module_cluster: Cluster, url: str) -> None:
    await module_cluster.fake_openai(FAKE_OPENAI_FIRST_TOKEN_MS=0, FAKE_OPENAI_TOKENS_PER_SECOND=0)
    await module_cluster.worker()
    client = await joined(url, make_token(user("tokens")))
    answer = await client.ask("[[tokens:50]] tell me everything", timeout=30)
    assert answer.end is not None, answer.error
    assert answer.end["finishReason"] == "length"
    assert answer.end["usage"]["completionTokens"] == 5  # WS_MAX_TOKENS=5
    requests = await module_cluster.openai_requests()
    assert requests[-1]["max_tokens"] == 5
    await client.close()


# ---------------------------------------------------------------------------- frame size


@pytest.mark.parametrize("when", ["first-frame", "after-join", "fragmented", "huge"])
async def test_payload_too_large_is_refused_by_the_websocket_layer(url: str, when: str) -> None:
    someone = user("payload")
    token = make_token(someone)
    client = await connect(url)
    if when != "first-frame":
        assert (await client.join(token))["type"] == "chat_joined"
    if when == "fragmented":
        await client.ws.send(["x" * 600, "y" * 600])  # each fragment fits, the message does not
    elif when == "huge":
        await client.ws.send("z" * 4_000_000)  # never read whole: refused on the frame header
    else:
        await client.ws.send('{"type":"send_message","data":{"content":"' + "z" * 1100 + '"}}')
    ending = await until_closed(client)
    assert ending.errors == ["PAYLOAD_TOO_LARGE"]
    assert ending.code == 1009
    assert ending.reason == "PAYLOAD_TOO_LARGE"
    # the user's slots are both free again
    pair = [await joined(url, token), await joined(url, token)]
    for other in pair:
        await other.close()


async def test_frames_up_to_the_limit_pass(url: str) -> None:
    client = await joined(url, make_token(user("fits")))
    head, tail = '{"type":"ping","requestId":"fits","pad":"', '"}'
    frame = head + "p" * (1024 - len(head) - len(tail)) + tail
    assert len(frame.encode()) == 1024
    await client.ws.send(frame)
    assert (await client.recv())["type"] == "pong"
    await client.close()


# ---------------------------------------------------------------------------- accounting


async def test_refusals_are_counted_by_reason_and_logged_without_secrets(url: str, limited: ServiceProcess) -> None:
    before = await refusals(limited.extra["http_url"])
    token = make_token(user("counted"))
    secret_content = "CONFIDENTIAL-" + "q" * 40
    client = await joined(url, token)
    await client.send("send_message", {"content": secret_content})
    assert (await client.recv())["data"]["code"] == "MESSAGE_TOO_LONG"
    await client.ws.send("y" * 2000)
    await until_closed(client)
    late = await connect(url)
    await late.send("join_chat", {"token": make_token("late-user", expires_in=-60), "chatType": "messages"})
    await until_closed(late)

    async def counted() -> bool:
        after = await refusals(limited.extra["http_url"])
        grew = {key for key, value in after.items() if value > before.get(key, 0)}
        return {
            ("MESSAGE_TOO_LONG", "content_length"),
            ("PAYLOAD_TOO_LARGE", "frame_size"),
            ("UNAUTHORIZED", "token_expired"),
        } <= grew

    await eventually(counted, timeout=5)
    log = limited.log_path.read_text()
    assert "refused: MESSAGE_TOO_LONG (content_length)" in log
    assert "refused: PAYLOAD_TOO_LARGE (frame_size)" in log
    assert token not in log
    assert "CONFIDENTIAL" not in log
