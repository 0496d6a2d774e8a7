"""A real client holds a conversation: gateway → RabbitMQ → worker → fake OpenAI → back, stored in PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import asyncpg
from websockets.exceptions import ConnectionClosed

from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess


async def test_spec_examples_work_as_written(gateway: ServiceProcess) -> None:
    """The three JavaScript examples of SPEC §2, byte for byte (placeholders filled with real values)."""
    url = gateway.extra["ws_url"]
    token = make_token("spec-examples-user")
    async with await ChatClient.connect(url) as first:
        created = await first.join(token, "messages")
        existing_id = created["data"]["chatId"]
    async with await ChatClient.connect(url) as client:
        # JSON.stringify({type: 'join_chat', data: {token, chatType: 'documents', chatId}})
        await client.ws.send(
            f'{{"type":"join_chat","data":{{"token":"{token}","chatType":"documents","chatId":"{existing_id}"}}}}'
        )
        joined = await client.recv()
        # the chat exists but is a messages chat: asking for it as documents does not find it
        assert joined["type"] == "error"
        assert joined["data"]["code"] == "CHAT_NOT_FOUND"

        await client.ws.send('{"type":"create_chat","data":{"chatType":"documents"}}')
        created_doc = await client.recv()
        assert created_doc["type"] == "chat_created"
        assert created_doc["data"]["chatType"] == "documents"

        await client.ws.send(f'{{"type":"switch_chat","data":{{"chatId":"{existing_id}","chatType":"messages"}}}}')
        switched = await client.recv()
        assert switched["type"] == "chat_switched"
        assert switched["data"] == {"chatId": existing_id, "chatType": "messages", "history": []}

        # the literal placeholder id is simply not a chat of this user
        await client.ws.send('{"type":"switch_chat","data":{"chatId":"new-chat-id","chatType":"messages"}}')
        assert (await client.recv())["data"]["code"] == "CHAT_NOT_FOUND"

    async with await ChatClient.connect(url) as client:
        await client.ws.send(
            f'{{"type":"join_chat","data":{{"token":"{token}","chatType":"messages","chatId":"{existing_id}"}}}}'
        )
        joined = await client.recv()
        assert joined["type"] == "chat_joined"
        assert joined["data"]["chatId"] == existing_id
        assert joined["data"]["userId"] == "spec-examples-user"


async def test_message_streams_an_ordered_answer_and_is_stored(gateway: ServiceProcess, db: asyncpg.Connection) -> None:
    async with await ChatClient.connect(gateway.extra["ws_url"]) as client:
        joined = await client.join(make_token("alice"), "messages")
        chat_id = joined["data"]["chatId"]
        await client.send("send_message", {"content": "Can my landlord keep the deposit?"}, requestId="q-1")
        answer = await client.collect()

    assert answer.error is None, answer.error
    accepted = answer.frames[0]
    assert accepted["type"] == "message_accepted"
    assert accepted["requestId"] == "q-1"
    assert accepted["data"]["chatId"] == chat_id
    assert answer.start is not None
    assert answer.start["chatId"] == chat_id
    assert [f["type"] for f in answer.frames[:2]] == ["message_accepted", "response_start"]
    assert answer.chunks, "no chunks streamed"
    seqs = [chunk["seq"] for chunk in answer.chunks]
    assert seqs == sorted(seqs)
    assert answer.end is not None
    assert answer.text == answer.end["content"]
    assert "Can my landlord keep the deposit?" in answer.end["content"]
    assert answer.end["finishReason"] == "stop"
    assert answer.end["usage"]["completionTokens"] > 0
    assert answer.end["messageId"] == answer.start["messageId"]

    rows = await db.fetch(
        "SELECT id::text, role, content, status FROM messages WHERE chat_id = $1::uuid ORDER BY seq", chat_id
    )
    assert [(r["role"], r["status"]) for r in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[0]["id"] == accepted["data"]["messageId"]
    assert rows[1]["id"] == answer.end["messageId"]
    assert rows[1]["content"] == answer.end["content"]


async def test_rejoining_returns_both_messages_in_history(gateway: ServiceProcess) -> None:
    token = make_token("bob")
    async with await ChatClient.connect(gateway.extra["ws_url"]) as client:
        chat_id = (await client.join(token, "documents"))["data"]["chatId"]
        answer = await client.ask("Draft a short NDA clause")
        assert answer.end is not None
    async with await ChatClient.connect(gateway.extra["ws_url"]) as client:
        joined = await client.join(token, "documents", chat_id)
    history = joined["data"]["history"]
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "Draft a short NDA clause"),
        ("assistant", answer.end["content"]),
    ]
    assert all(m["createdAt"].endswith("Z") for m in history)
    assert history[0]["id"] == answer.accepted["messageId"]  # type: ignore[index]


async def test_chat_types_send_their_own_system_prompt_and_max_tokens(stack: Cluster, gateway: ServiceProcess) -> None:
    questions = {"documents": "doc-prompt-probe", "messages": "msg-prompt-probe"}
    for chat_type, question in questions.items():
        async with await ChatClient.connect(gateway.extra["ws_url"]) as client:
            await client.join(make_token("carol"), chat_type)
            assert (await client.ask(question)).end is not None
    requests = await stack.openai_requests()
    by_question = {}
    for body in requests:
        messages = body["messages"]
        assert isinstance(messages, list)
        by_question[messages[-1]["content"]] = body
    documents, messages = by_question["doc-prompt-probe"], by_question["msg-prompt-probe"]
    doc_system, msg_system = documents["messages"][0], messages["messages"][0]  # type: ignore[index]
    assert doc_system["role"] == msg_system["role"] == "system"
    assert doc_system["content"] != msg_system["content"]
    assert "document" in doc_system["content"].lower()
    assert "legal assistant" in msg_system["content"].lower()
    assert documents["max_tokens"] == messages["max_tokens"] == 2000  # WS_MAX_TOKENS default
    assert documents["stream"] is True
    assert documents["model"] == "fake-model"


async def test_another_users_chat_is_not_found(gateway: ServiceProcess) -> None:
    url = gateway.extra["ws_url"]
    async with await ChatClient.connect(url) as owner:
        chat_id = (await owner.join(make_token("owner"), "messages"))["data"]["chatId"]
        assert (await owner.ask("my private question")).end is not None
    async with await ChatClient.connect(url) as intruder:
        refused = await intruder.join(make_token("intruder"), "messages", chat_id)
        assert refused["type"] == "error"
        assert refused["data"]["code"] == "CHAT_NOT_FOUND"
        # indistinguishable from an id that does not exist
        await intruder.send("switch_chat", {"chatId": "00000000-0000-0000-0000-000000000000", "chatType": "messages"})
        unknown = await intruder.recv()
        await intruder.send("switch_chat", {"chatId": chat_id, "chatType": "messages"})
        foreign = await intruder.recv()
        assert unknown["data"] == foreign["data"]
        # its own chat still works afterwards, and never sees the owner's history
        await intruder.send("create_chat", {"chatType": "messages"})
        assert (await intruder.recv())["type"] == "chat_created"
        await intruder.send("send_message", {"content": "hello", "chatId": chat_id})
        assert (await intruder.recv())["data"]["code"] == "CHAT_NOT_FOUND"


async def test_two_gateways_two_workers_each_client_gets_its_own_answers(cluster: Cluster) -> None:
    await cluster.fake_openai(FAKE_OPENAI_TOKENS_PER_SECOND=400)
    gateways = [await cluster.gateway(), await cluster.gateway()]
    await cluster.worker()
    await cluster.worker()

    async def converse(index: int) -> list[tuple[str, str]]:
        url = gateways[index % 2].extra["ws_url"]
        results = []
        async with await ChatClient.connect(url) as client:
            await client.join(make_token(f"user-{index}"), ("messages", "documents")[index % 2])
            for turn in range(3):
                question = f"client {index} turn {turn}"
                answer = await client.ask(question, timeout=30)
                assert answer.end is not None, answer.error
                results.append((question, answer.end["content"]))
                assert answer.text == answer.end["content"]
        return results

    conversations = await asyncio.gather(*(converse(i) for i in range(8)))
    for index, turns in enumerate(conversations):
        for question, content in turns:
            assert f"«{question}»" in content, (index, question, content)


async def test_invalid_frames_get_invalid_message_and_connection_keeps_working(
    gateway: ServiceProcess,
) -> None:
    async with await ChatClient.connect(gateway.extra["ws_url"]) as client:
        await client.join(make_token("fuzzy"), "messages")
        bad_frames: list[str | bytes] = [
            "not json at all",
            "[1, 2, 3]",
            '"a string"',
            "{}",
            '{"type": "launch_missiles", "data": {}}',
            '{"type": "send_message", "data": {"content": 42}}',
            '{"type": "create_chat", "data": {"chatType": "spreadsheets"}}',
            '{"type": "switch_chat", "data": "nope"}',
            b"\x00\x01binary",
        ]
        for raw in bad_frames:
            await client.ws.send(raw)
            reply = await client.recv()
            assert reply["type"] == "error", raw
            assert reply["data"]["code"] == "INVALID_MESSAGE", raw
        await client.ws.send(json.dumps({"type": "bogus", "requestId": "r-9"}))
        assert (await client.recv())["requestId"] == "r-9"
        await client.send("ping", requestId="p")
        pong = await client.recv()
        assert pong["type"] == "pong"
        assert pong["requestId"] == "p"
        assert (await client.ask("still here?")).end is not None


async def _refused(url: str, first_frame: str) -> tuple[dict[str, object], int | None]:
    client = await ChatClient.connect(url)
    await client.ws.send(first_frame)
    frame = await client.recv()
    try:
        await asyncio.wait_for(client.ws.recv(), 5)
    except ConnectionClosed as closed:
        return frame, closed.rcvd.code if closed.rcvd else None
    raise AssertionError("connection stayed open")


async def test_bad_tokens_are_unauthorized_and_closed_1008(gateway: ServiceProcess) -> None:
    import jwt

    url = gateway.extra["ws_url"]
    none_token = jwt.encode({"sub": "mallory", "exp": 4102444800}, key=None, algorithm="none")
    cases = {
        "forged": make_token("mallory", secret="not-the-secret-but-long-enough-for-hs256"),
        "expired": make_token("mallory", expires_in=-120),
        "alg none": none_token,
        "garbage": "your-jwt-token",
    }
    for name, token in cases.items():
        frame, code = await _refused(
            url, json.dumps({"type": "join_chat", "data": {"token": token, "chatType": "messages"}})
        )
        assert frame["type"] == "error", name
        assert frame["data"]["code"] == "UNAUTHORIZED", name  # type: ignore[index]
        assert code == 1008, name
    frame, code = await _refused(url, json.dumps({"type": "join_chat", "data": {"chatType": "messages"}}))
    assert (frame["data"]["code"], code) == ("UNAUTHORIZED", 1008)  # type: ignore[index]
    frame, code = await _refused(url, json.dumps({"type": "ping"}))
    assert (frame["data"]["code"], code) == ("UNAUTHORIZED", 1008)  # type: ignore[index]
