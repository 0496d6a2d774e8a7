"""The client keeps a session through a gateway restart and through token expiry."""

from __future__ import annotations

import asyncio
import time
import uuid

from chat_client import NO_RECONNECT, AnswerChunk, Backoff, ChatClient
from tests.client.conftest import QUICK_STOP
from tests.support.client import make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess, free_port
from tests.support.wait import eventually


async def test_reconnects_after_the_gateway_restarts_and_keeps_the_chat(client_cluster: Cluster) -> None:
    """A gateway of the test's own (the shared cluster's worker answers) is killed mid-answer and started
    again on its port: the client reconnects, rejoins its chat and gets the whole answer."""
    cluster = client_cluster
    port = free_port()
    gateway = await cluster.gateway(gateway_port=port, **QUICK_STOP)
    user = f"lib-restart-{uuid.uuid4().hex[:8]}"
    tokens_issued = 0

    def provider() -> str:
        nonlocal tokens_issued
        tokens_issued += 1
        return make_token(user)

    restarted: ServiceProcess | None = None
    client = await ChatClient.connect(
        gateway.extra["ws_url"],
        provider,
        reconnect=Backoff(initial=0.2, maximum=1.0, max_attempts=60),
        resume_timeout=0.5,
    )
    try:
        chat_id = client.chat_id
        # 200 tokens, 100 ms apart: still streaming when the new gateway is up (it takes seconds to start)
        answer = await client.send("[[slow:100]] [[tokens:200]] explain force majeure")
        async for event in answer:
            assert isinstance(event, AnswerChunk)
            break  # the answer is streaming: now the gateway dies
        gateway.kill()
        assert await _disconnected(client)
        restarted = await cluster.gateway(gateway_port=port, **QUICK_STOP)

        # the interrupted answer ends: resumed by the gateway, or read back from the chat's history
        end = await asyncio.wait_for(answer.result(), 40)
        assert end.finish_reason == "stop"
        assert answer.text == end.content
        stored = (await client.switch_chat(chat_id or "", "messages")).history
        assert [(m.role, m.status) for m in stored] == [("user", "complete"), ("assistant", "complete")]
        assert stored[1].content == end.content, "the whole answer, not the part before the crash"
        if not end.recovered:  # a gateway that resumes streamed the rest
            assert end.usage is not None
            assert end.usage["completionTokens"] == 200

        # the gateway drains on SIGTERM: the answer may end before the close, and the reconnect after it
        assert await _connected(client)
        assert client.reconnects == 1
        assert client.chat_id == chat_id, "the client rejoined the chat it was in"
        assert tokens_issued >= 2, "the reconnect asked the provider for a token"
        after = await client.ask("[[tokens:3]] and after the restart?")
        assert after.finish_reason == "stop"
        assert [m.role for m in client.history][:1] == ["user"]
    finally:
        await client.close()
        await gateway.stop()
        if restarted is not None:
            await restarted.stop()


async def test_reconnects_to_a_fallback_gateway_when_its_own_is_gone(
    client_cluster: Cluster, client_gateway: ServiceProcess
) -> None:
    """``fallback_urls``: the client's gateway dies for good; the reconnect goes to the next URL, the
    shared gateway, in the same chat, and ``url`` names it."""
    own = await client_cluster.gateway(gateway_port=free_port(), **QUICK_STOP)
    fallback = client_gateway.extra["ws_url"]
    client = await ChatClient.connect(
        own.extra["ws_url"],
        make_token(f"lib-fallback-{uuid.uuid4().hex[:8]}"),
        fallback_urls=[fallback],
        reconnect=Backoff(initial=0.1, maximum=0.5, max_attempts=20),
    )
    try:
        assert client.url == own.extra["ws_url"]
        chat_id = client.chat_id
        own.kill()
        # the first attempt may come within milliseconds: wait for where the client ends, not for the gap
        await eventually(lambda: client.connected and client.url == fallback, timeout=20, what="on the fallback")
        assert client.reconnects == 1
        assert client.chat_id == chat_id
        end = await client.ask("[[tokens:2]] on the other gateway?")
        assert end.finish_reason == "stop"
    finally:
        await client.close()
        await own.stop()


async def _connected(client: ChatClient, timeout: float = 20) -> bool:
    return bool(await eventually(lambda: client.connected, timeout=timeout, interval=0.02, what="the client connected"))


async def _disconnected(client: ChatClient, timeout: float = 10) -> bool:
    return bool(await eventually(lambda: not client.connected, timeout=timeout, interval=0.02, what="disconnected"))


async def test_token_is_refreshed_before_it_expires(client_gateway: ServiceProcess) -> None:
    """Tokens live 3 s and the gateway (JWT_LEEWAY=0) closes a connection when its token expires:
    only refreshing keeps one open."""
    url = client_gateway.extra["ws_url"]
    user = f"lib-refresh-{uuid.uuid4().hex[:8]}"
    issued: list[str] = []

    async def provider() -> str:
        issued.append(make_token(user, expires_in=3, jti=uuid.uuid4().hex))
        return issued[-1]

    refreshing = await ChatClient.connect(url, provider, refresh_margin=1.5, reconnect=NO_RECONNECT)
    static = await ChatClient.connect(url, make_token(user, expires_in=3), reconnect=NO_RECONNECT)
    try:
        first_expiry = refreshing.token_expires_at
        assert first_expiry is not None
        await asyncio.sleep(5)  # the behaviour under test: time passes beyond the tokens' 3 s life
        assert time.time() > first_expiry + 1
        # the connection without refresh was closed by the gateway when its token expired...
        assert not static.connected
        assert static.last_error is not None
        assert static.last_error.code == "UNAUTHORIZED"
        # ...the refreshing one is the same connection, still authorised
        assert refreshing.connected
        assert refreshing.reconnects == 0
        assert len(issued) >= 3
        assert refreshing.token_expires_at is not None
        assert refreshing.token_expires_at > first_expiry
        end = await refreshing.ask("[[tokens:2]] still there?")
        assert end.finish_reason == "stop"
    finally:
        await refreshing.close()
        await static.close()
