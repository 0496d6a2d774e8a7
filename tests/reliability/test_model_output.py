"""What the model sends is cleaned before it is sent or stored, and data the store refuses is a final
failure: in both cases the model is called once and the client never sees a second attempt."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from tests.reliability.helpers import assert_ledger, joined, ledger, stream_of
from tests.support.client import make_token
from tests.support.cluster import Cluster
from tests.support.fake_openai import POISON_CLEAN
from tests.support.processes import ServiceProcess


async def test_nul_and_lone_surrogates_from_the_model_are_cleaned_answer_stored_once(
    rel: Cluster, fake: ServiceProcess, db: asyncpg.Connection
) -> None:
    gateway, _worker = await asyncio.gather(rel.gateway(), rel.worker())
    marker = f"poison-{uuid.uuid4().hex[:8]}"
    client, chat_id = await joined(gateway.extra["ws_url"], make_token("rel-poison"))
    async with client:
        answer = await client.ask(f"[[poison]] {marker}")
    assert answer.error is None, answer.frames
    assert answer.start is not None, answer.frames
    assert "attempt" not in answer.start, answer.frames
    assert [f["type"] for f in answer.frames].count("response_start") == 1, answer.frames
    assert answer.end is not None, answer.frames
    assert answer.end["content"] == POISON_CLEAN
    assert answer.text == POISON_CLEAN
    assert len(await stream_of(fake, marker)) == 1  # the model was called once
    assert answer.accepted is not None
    outcome = await assert_ledger(db, [chat_id], {answer.accepted["messageId"]})
    assert list(outcome.values()) == [("complete", None, "complete")]
    stored = [r["content"] for r in await ledger(db, [chat_id]) if r["role"] == "assistant"]
    assert stored == [POISON_CLEAN]


async def test_answer_the_store_refuses_is_a_final_failure_not_a_redelivery(
    rel: Cluster, fake: ServiceProcess, db: asyncpg.Connection
) -> None:
    # a real PostgreSQL data error (class 22) on the answer's insert, for this test's marker only
    marker = f"refused{uuid.uuid4().hex[:8]}"
    function = f"refuse_{marker}"
    await db.execute(
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.role = 'assistant' AND NEW.content LIKE '%{marker}%' THEN"
        "  RAISE EXCEPTION 'refused by the test' USING ERRCODE = '22P05'; END IF;"
        " RETURN NEW; END $$"
    )
    await db.execute(f"CREATE TRIGGER {function} BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION {function}()")
    try:
        gateway, _worker = await asyncio.gather(rel.gateway(), rel.worker())
        client, chat_id = await joined(gateway.extra["ws_url"], make_token("rel-refused"))
        async with client:
            answer = await client.ask(marker)
            assert answer.error is not None, answer.frames
            assert answer.error["code"] == "INTERNAL", answer.error
            assert [f["type"] for f in answer.frames].count("response_start") == 1, answer.frames
            # the connection still works, and the next answer is the next message's, not a redelivery
            after = await client.ask("and this one")
        assert after.end is not None, after.frames
        assert after.start is not None, after.frames
        assert "attempt" not in after.start
        assert len(await stream_of(fake, marker)) == 1  # one model call, no redelivery
        assert answer.accepted is not None
        assert after.accepted is not None
        outcome = await assert_ledger(db, [chat_id], {answer.accepted["messageId"], after.accepted["messageId"]})
        assert outcome[answer.accepted["messageId"]] == ("failed", "INTERNAL", None)
    finally:
        await db.execute(f"DROP TRIGGER IF EXISTS {function} ON messages")
        await db.execute(f"DROP FUNCTION IF EXISTS {function}()")


async def test_history_sent_to_the_model_is_trimmed_to_the_token_budget(rel: Cluster) -> None:
    budget = 600
    gateway, _worker = await asyncio.gather(rel.gateway(), rel.worker(HISTORY_TOKEN_BUDGET=budget))
    marker = uuid.uuid4().hex[:8]
    questions = [f"q{i}-{marker} " + " ".join(["договор"] * 25) for i in range(4)]  # ~420 UTF-8 bytes each
    client, _chat_id = await joined(gateway.extra["ws_url"], make_token("rel-budget"))
    async with client:
        for question in questions:
            answer = await client.ask(question)
            assert answer.end is not None, answer.frames
    last = [
        body
        for body in await rel.openai_requests()
        if questions[-1] in str(body["messages"][-1]["content"])  # type: ignore[index]
    ]
    assert len(last) == 1
    messages: list[dict[str, str]] = last[0]["messages"]  # type: ignore[assignment]
    assert messages[0]["role"] == "system"
    context = messages[1:]
    assert context[-1] == {"role": "user", "content": questions[-1]}  # the question, whole
    # every kept message is whole, and the estimate (>= bytes / 3) of all of them is within the budget
    sent = [m["content"] for m in context]
    assert sum(len(text.encode()) for text in sent) <= 3 * budget
    assert not any(questions[0] == text for text in sent)  # the oldest had to go
    assert len(context) >= 3  # ...but not more than needed: the previous exchange is there
