"""The worker's decisions about a delivery, in process: no broker, no database, a fake clock.

``RequestConsumer`` decides how each delivery ends (ack, requeue, dead-letter, abandon) and
``settle`` acts on it; these tests drive both with a delivery that records what was done to it,
an answerer whose answer the test chooses, and a store that records what was written. The
dead-letter consumer settles the same way; the reaper's rounds run on a fake sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from opentelemetry import trace

from chat_common.envelopes import ChatRequest, ControlMessage
from chat_common.reply_batch import Reply, decode_batch
from llm_worker import dead_letters, reaper
from llm_worker.active import ActiveAnswers
from llm_worker.answer import CancelScope
from llm_worker.consumer import RequestConsumer, attempt_of
from llm_worker.control import ResumeBook
from llm_worker.metrics import WorkerMetrics
from llm_worker.outcomes import Abandon, Ack, Nack, Reject, settle
from llm_worker.reply_batcher import ReplyBatcher


class Delivery:
    """What aio-pika hands the consumer, recording how it was settled."""

    def __init__(self, body: bytes, *, headers: dict[str, Any] | None = None, fail: bool = False) -> None:
        self.body = body
        self.headers = headers or {}
        self.redelivered = False
        self.message_id = "m1"
        self.exchange = "chat.requests"
        self.routing_key = "chat.requests.messages"
        self.settled: list[tuple[str, bool | None]] = []
        self._fail = fail

    async def _do(self, what: str, requeue: bool | None) -> None:
        if self._fail:
            raise ConnectionError("channel closed")
        self.settled.append((what, requeue))

    async def ack(self) -> None:
        await self._do("ack", None)

    async def nack(self, requeue: bool = True) -> None:
        await self._do("nack", requeue)

    async def reject(self, requeue: bool = False) -> None:
        await self._do("reject", requeue)


class Store:
    def __init__(self, *, answer: object = None, away: bool = False) -> None:
        self.marked: list[tuple[str, str, str | None]] = []
        self.answer = answer
        self.away = away

    async def mark_request(self, request_id: str, status: str, *, error_code: str | None = None, **_: Any) -> None:
        self.marked.append((request_id, status, error_code))

    async def get_answer(self, request_id: str) -> object:
        if self.away:
            raise ConnectionRefusedError("PostgreSQL is away")
        return self.answer


class Answerer:
    """Answers as the test says: an outcome, or an exception."""

    def __init__(self, result: Any) -> None:
        self.store = Store()
        self.result = result
        self.failed_final: list[str] = []
        self.scopes: list[CancelScope] = []
        self.started = asyncio.Event()

    async def answer(self, request: ChatRequest, replies: Any, scope: CancelScope) -> tuple[str, float | None]:
        self.scopes.append(scope)
        self.started.set()
        if isinstance(self.result, BaseException):
            raise self.result
        if self.result == "hang":
            await asyncio.Event().wait()
        return self.result, 12.5

    async def fail_final(self, request: ChatRequest, replies: Any) -> None:
        self.failed_final.append(request.request_id)


class Replies:
    """The worker's reply batcher, publishing into a list."""

    def __init__(self) -> None:
        self.published: list[tuple[str, list[Reply]]] = []
        self.batcher = ReplyBatcher(self._publish)
        self._task = asyncio.get_running_loop().create_task(self.batcher.run())

    async def _publish(self, reply_to: str, body: bytes) -> None:
        self.published.append((reply_to, decode_batch(body)))


def _request(*, deadline_ms: int | None = None) -> ChatRequest:
    return ChatRequest(
        request_id=str(uuid.uuid4()),
        user_message_id="u1",
        assistant_message_id="a1",
        chat_id="c1",
        chat_type="messages",
        user_id="user-1",
        connection_id="conn-1",
        reply_to="gw",
        deadline_ms=deadline_ms if deadline_ms is not None else 2**62,
        max_tokens=100,
    )


def _consumer(answerer: Answerer, *, connected: bool = True) -> tuple[RequestConsumer, WorkerMetrics]:
    metrics = WorkerMetrics()
    consumer = RequestConsumer(
        answerer,  # type: ignore[arg-type]
        ActiveAnswers(metrics),
        ResumeBook(keep_s=60),
        metrics,
        replies=Replies().batcher,
        connected=lambda: connected,
    )
    return consumer, metrics


async def _deliver(consumer: RequestConsumer, delivery: Delivery) -> None:
    await consumer.on_message(delivery)  # type: ignore[arg-type]
    await asyncio.gather(*consumer.tasks, return_exceptions=True)


def _outcomes(metrics: WorkerMetrics) -> dict[str, int]:
    from chat_common.metrics import counts_by_label

    return {k: v for k, v in counts_by_label(metrics.requests, "outcome").items() if v}


async def test_an_answer_stored_and_sent_is_acked_and_counted() -> None:
    answerer = Answerer("complete")
    consumer, metrics = _consumer(answerer)
    await _deliver(consumer, Delivery(_request().model_dump_json().encode()))
    assert answerer.scopes, "the request was answered"
    assert _outcomes(metrics) == {"complete": 1}
    assert len(consumer.active) == 0
    assert metrics.in_flight._value.get() == 0


async def test_settle_acts_once_per_outcome() -> None:
    span = trace.get_tracer("test").start_span("x")
    cases = [
        (Ack("complete"), [("ack", None)]),
        (Nack("store_error"), [("nack", True)]),
        (Reject(), [("reject", False)]),
        (Abandon(), []),
    ]
    for decision, expected in cases:
        delivery = Delivery(b"{}")
        await settle(delivery, decision, metrics=WorkerMetrics(), span=span)  # type: ignore[arg-type]
        assert delivery.settled == expected, decision


async def test_an_ack_the_broker_cannot_take_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    delivery = Delivery(b"{}", fail=True)
    span = trace.get_tracer("test").start_span("x")
    await settle(delivery, Ack("complete"), metrics=WorkerMetrics(), span=span)  # type: ignore[arg-type]
    assert [r.message for r in caplog.records if "not delivered" in r.message] == [
        "request m1: Ack not delivered to the broker (ConnectionError('channel closed'))"
    ]


async def test_a_malformed_request_is_dead_lettered_without_an_answer() -> None:
    answerer = Answerer("complete")
    consumer, metrics = _consumer(answerer)
    delivery = Delivery(b'{"not": "a request"}')
    await _deliver(consumer, delivery)
    assert delivery.settled == [("reject", False)]
    assert answerer.scopes == []
    assert _outcomes(metrics) == {}


async def test_a_request_past_its_deadline_is_recorded_as_timeout_and_acked() -> None:
    answerer = Answerer("complete")
    consumer, metrics = _consumer(answerer)
    request = _request(deadline_ms=1)
    delivery = Delivery(request.model_dump_json().encode())
    await _deliver(consumer, delivery)
    assert delivery.settled == [("ack", None)]
    assert answerer.store.marked == [(request.request_id, "failed", "TIMEOUT")]
    assert _outcomes(metrics) == {"expired": 1}


async def test_data_the_store_refuses_fails_the_request_for_good() -> None:
    answerer = Answerer(asyncpg.exceptions.DataError("invalid byte sequence"))
    consumer, metrics = _consumer(answerer)
    request = _request()
    delivery = Delivery(request.model_dump_json().encode())
    await _deliver(consumer, delivery)
    assert delivery.settled == [("ack", None)]
    assert answerer.failed_final == [request.request_id]
    assert _outcomes(metrics) == {"data_error": 1}


async def test_a_failure_is_requeued_while_connected_and_abandoned_once_the_broker_is_gone() -> None:
    for connected, expected, outcomes in (
        (True, [("nack", True)], {"store_error": 1}),
        (False, [], {}),
    ):
        consumer, metrics = _consumer(Answerer(RuntimeError("boom")), connected=connected)
        delivery = Delivery(_request().model_dump_json().encode())
        await _deliver(consumer, delivery)
        assert delivery.settled == expected
        assert _outcomes(metrics) == outcomes


async def test_a_cancelled_answer_goes_back_to_the_queue_and_the_cancellation_goes_on() -> None:
    answerer = Answerer("hang")
    consumer, _ = _consumer(answerer)
    delivery = Delivery(_request().model_dump_json().encode())
    await consumer.on_message(delivery)  # type: ignore[arg-type]
    [task] = consumer.tasks
    await asyncio.wait_for(answerer.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert delivery.settled == [("nack", True)]
    assert len(consumer.active) == 0


async def test_a_redelivery_of_an_answer_in_progress_takes_it_over() -> None:
    answerer = Answerer("hang")
    consumer, _ = _consumer(answerer)
    request = _request()
    first = Delivery(request.model_dump_json().encode())
    await consumer.on_message(first)  # type: ignore[arg-type]
    await asyncio.wait_for(answerer.started.wait(), 5)
    second = Delivery(request.model_dump_json().encode(), headers={"x-delivery-count": 1})
    assert attempt_of(second) == 2  # type: ignore[arg-type]
    answerer.result = "complete"
    await _deliver(consumer, second)
    assert answerer.scopes[0].reason == "lost"
    assert first.settled == [("nack", True)]
    assert second.settled == [("ack", None)]


def test_the_resume_book_forgets_after_a_requests_lifetime() -> None:
    now = [100.0]
    book = ResumeBook(keep_s=60, clock=lambda: now[0])
    request = _request()
    book.note(ControlMessage(kind="resume", message_id="a1", user_id="user-1", connection_id="c2", reply_to="gw2"))
    moved = book.latest(request)
    assert moved is not None
    assert moved.connection_id == "c2"
    other_user = request.model_copy(update={"user_id": "user-2"})
    assert book.latest(other_user) is None, "a resume moves only its own user's answer"
    now[0] += 61
    assert book.latest(request) is None


def _dead_letters(store: Store) -> tuple[dead_letters.DeadLetters, Replies, WorkerMetrics]:
    replies, metrics = Replies(), WorkerMetrics()
    return dead_letters.DeadLetters(store, replies.batcher, metrics), replies, metrics  # type: ignore[arg-type]


async def test_a_dead_letter_is_recorded_as_failed_the_client_told_and_the_notice_acked() -> None:
    consumer, exchange, metrics = _dead_letters(Store())
    request = _request(deadline_ms=1)
    expired = Delivery(request.model_dump_json().encode(), headers={"x-death": [{"reason": b"expired"}]})
    await consumer.on_message(expired)  # type: ignore[arg-type]
    assert expired.settled == [("ack", None)]
    assert consumer.store.marked == [(request.request_id, "failed", "TIMEOUT")]  # type: ignore[attr-defined]
    assert [(to, [(r.kind, r.code) for r in batch]) for to, batch in exchange.published] == [
        ("gw", [("error", "TIMEOUT")])
    ], "the client is told"
    assert _outcomes(metrics) == {"dead_letter": 1}


async def test_a_dead_letter_answered_meanwhile_or_malformed_is_acked_silently() -> None:
    for store, body in ((Store(answer=object()), _request().model_dump_json().encode()), (Store(), b"not json")):
        consumer, exchange, metrics = _dead_letters(store)
        delivery = Delivery(body)
        await consumer.on_message(delivery)  # type: ignore[arg-type]
        assert delivery.settled == [("ack", None)]
        assert store.marked == []
        assert exchange.published == []
        assert _outcomes(metrics) == {}


async def test_a_dead_letter_goes_back_to_its_queue_while_the_database_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dead_letters, "UNAVAILABLE_BACKOFF_S", 0)
    consumer, exchange, _ = _dead_letters(Store(away=True))
    delivery = Delivery(_request(deadline_ms=1).model_dump_json().encode())
    await consumer.on_message(delivery)  # type: ignore[arg-type]
    assert delivery.settled == [("nack", True)]
    assert exchange.published == []


async def test_a_dead_letter_ack_the_broker_cannot_take_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    consumer, _, _ = _dead_letters(Store())
    await consumer.on_message(Delivery(b"not json", fail=True))  # type: ignore[arg-type]
    assert [r.message for r in caplog.records if "not delivered" in r.message] == [
        "dead letter m1: Ack not delivered to the broker (ConnectionError('channel closed'))"
    ]


class ReapStore:
    def __init__(self, results: list[int | BaseException]) -> None:
        self.results = results
        self.asked: list[float] = []

    async def fail_stale_requests(self, *, older_than_s: float) -> int:
        self.asked.append(older_than_s)
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


async def test_the_reaper_waits_a_margin_past_the_deadline_and_survives_a_failed_round() -> None:
    store = ReapStore([RuntimeError("boom"), ConnectionRefusedError("away"), 3])
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        if len(slept) == 3:
            raise asyncio.CancelledError
        slept.append(seconds)

    with pytest.raises(asyncio.CancelledError):
        await reaper.reap_forever(store, request_timeout_s=120, sleep=sleep)  # type: ignore[arg-type]
    assert slept == [60.0, 60.0, 60.0], "half the request timeout, at most a minute"
    assert store.asked == [120 + reaper.REAP_MARGIN_S] * 3, "every round ran, after a failure too"
    assert reaper.reap_interval(4) == 5.0
