"""The Python client library (chat_client) against the real stack: conversation, chats, errors, cancel."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from chat_client import (
    ERRORS_BY_CODE,
    NO_RECONNECT,
    AnswerChunk,
    AnswerEnd,
    Backoff,
    ChatClient,
    ChatNotFound,
    MessageTooLong,
    RateLimited,
    Unauthorized,
)
from chat_client.policy import refresh_delay, token_expiry
from chat_common.errors import ErrorCode
from tests.support.client import make_token
from tests.support.processes import ServiceProcess


def user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_send_streams_chunks_then_the_end(gateway: ServiceProcess) -> None:
    async with await ChatClient.connect(gateway.extra["ws_url"], make_token(user("lib-stream"))) as client:
        assert client.chat_id is not None
        assert client.chat_type == "messages"
        answer = await client.send("[[tokens:12]] what is a contract")
        assert answer.user_message_id is not None
        events = [event async for event in answer]
        chunks = [e for e in events if isinstance(e, AnswerChunk)]
        end = events[-1]
        assert isinstance(end, AnswerEnd)
        assert all(isinstance(e, AnswerChunk) for e in events[:-1])
        assert chunks, "the answer streamed in chunks"
        assert "".join(c.delta for c in chunks) == end.content == answer.text
        assert end.finish_reason == "stop"
        assert end.usage is not None
        assert end.usage["completionTokens"] == 12
        assert end.message_id == answer.message_id
        assert not end.recovered
        seqs = [c.seq for c in chunks]
        assert seqs == sorted(seqs)
        assert answer.sent_at <= (answer.accepted_at or 0) <= (answer.first_chunk_at or 0) <= (answer.ended_at or 0)
        # ask() is send + result()
        second = await client.ask("[[tokens:3]] and a second question")
        assert second.finish_reason == "stop"
        assert second.content


async def test_create_switch_and_list_chats(gateway: ServiceProcess) -> None:
    url = gateway.extra["ws_url"]
    async with await ChatClient.connect(url, make_token(user("lib-chats")), chat_type="documents") as client:
        first = client.chat_id
        assert first is not None
        await client.ask("[[tokens:4]] review my NDA")
        created = await client.create_chat("messages")
        assert created.chat_id != first
        assert (client.chat_id, client.chat_type) == (created.chat_id, "messages")
        switched = await client.switch_chat(first, "documents")
        assert client.chat_id == first
        assert [m.role for m in switched.history] == ["user", "assistant"]
        assert switched.history[0].content == "[[tokens:4]] review my NDA"
        chats = await client.list_chats()
        assert {c.chat_id for c in chats} == {first, created.chat_id}
        by_id = {c.chat_id: c for c in chats}
        assert by_id[first].chat_type == "documents"
        assert by_id[first].title == "[[tokens:4]] review my NDA"
        with pytest.raises(ChatNotFound):
            await client.switch_chat(str(uuid.uuid4()), "messages")
        assert client.chat_id == first, "a failed switch leaves the connection where it was"


async def test_rejoin_an_existing_chat_gets_its_history(gateway: ServiceProcess) -> None:
    url, token = gateway.extra["ws_url"], make_token(user("lib-rejoin"))
    async with await ChatClient.connect(url, token) as first:
        await first.ask("[[tokens:2]] remember this")
        chat_id = first.chat_id
    async with await ChatClient.connect(url, token, chat_id=chat_id) as again:
        assert again.chat_id == chat_id
        assert [m.content for m in again.history][:1] == ["[[tokens:2]] remember this"]


async def test_typed_errors(gateway: ServiceProcess) -> None:
    url = gateway.extra["ws_url"]
    with pytest.raises(Unauthorized) as refused:
        await ChatClient.connect(url, make_token("x", secret="not-the-gateway-secret-0123456789abcdef"))
    assert refused.value.code == "UNAUTHORIZED"
    with pytest.raises(ChatNotFound):
        await ChatClient.connect(url, make_token(user("lib-err")), chat_id=str(uuid.uuid4()))
    async with await ChatClient.connect(url, make_token(user("lib-err"))) as client:
        with pytest.raises(MessageTooLong) as too_long:
            await client.send("x" * 4001)
        assert "4001" in too_long.value.message
        end = await client.ask("[[tokens:2]] still works")
        assert end.finish_reason == "stop"


async def test_cancel_ends_the_answer_as_cancelled(gateway: ServiceProcess) -> None:
    async with await ChatClient.connect(gateway.extra["ws_url"], make_token(user("lib-cancel"))) as client:
        answer = await client.send("[[slow:100]] [[tokens:200]] a long answer")
        async for event in answer:
            assert isinstance(event, AnswerChunk)
            await answer.cancel()
            break
        end = await answer.result()
        assert end.finish_reason == "cancelled"
        assert len(end.content.split()) < 200


async def test_rate_limit_is_raised_with_its_wait(gateway: ServiceProcess) -> None:
    """The stack keeps the default limit: 30 messages a minute per user; the 31st is refused."""
    async with await ChatClient.connect(gateway.extra["ws_url"], make_token(user("lib-rate"))) as client:
        answers = [await client.send(f"[[tokens:1]] question {n}") for n in range(30)]
        with pytest.raises(RateLimited) as limited:
            await client.send("one too many")
        assert limited.value.retry_after is not None
        assert 0 < limited.value.retry_after <= 60
        assert client.connected, "RATE_LIMITED keeps the connection open"
        ends = await asyncio.gather(*(answer.result() for answer in answers))
        assert all(end.finish_reason == "stop" for end in ends)


def test_every_spec_error_code_has_a_typed_error() -> None:
    assert set(ERRORS_BY_CODE) == {code.value for code in ErrorCode}


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = Backoff(initial=0.5, maximum=8, factor=2)
    assert [policy.delay(n, rand=lambda: 1.0) for n in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert policy.delay(3, rand=lambda: 0.25) == 1.0
    assert NO_RECONNECT.max_attempts == 0


def test_token_expiry_and_refresh_timing() -> None:
    token = make_token("someone", expires_in=600)
    expiry = token_expiry(token)
    assert expiry is not None
    assert 590 < expiry - time.time() <= 600
    assert token_expiry("not-a-jwt") is None
    assert refresh_delay(600, 60) == 540
    assert refresh_delay(10, 60) == 5
    assert refresh_delay(0.2, 60) == 0.5
