"""The gateway's decisions about a request in flight, in process: no broker, no socket, a fake clock.

``InFlight`` decides what of a worker's replies reaches the client (attempts, duplicates, resume
adoption) and when a request is over (end, error, timeout, disconnect); these tests drive it
directly, with a connection whose socket records what it is sent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat_common.envelopes import ChatRequest, ControlMessage
from chat_common.errors import ErrorCode
from chat_common.reply_batch import Reply
from chat_gateway.connection import Connection
from chat_gateway.door import Door, DoorLimits
from chat_gateway.inflight import RESUME_WAIT_S, InFlight, Phase
from chat_gateway.metrics import GatewayMetrics
from chat_gateway.refusals import Refusal


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self) -> None:
        self.metrics = GatewayMetrics()
        self.controls: list[ControlMessage] = []
        self.clock = Clock()
        self.inflight = InFlight(self.metrics, self._publish, request_timeout_s=120.0, clock=self.clock)

    async def _publish(self, control: ControlMessage) -> None:
        self.controls.append(control)

    def connection(self, name: str = "c1") -> tuple[Connection, FakeSocket]:
        socket = FakeSocket()
        connection = Connection(id=name, websocket=socket, client_address="127.0.0.1")  # type: ignore[arg-type]
        connection.user_id, connection.chat_id = "u1", "chat-1"
        return connection, socket

    def in_flight(self) -> float:
        return float(self.metrics.in_flight._value.get())


def _request(n: int = 1, connection_id: str = "c1") -> ChatRequest:
    return ChatRequest(
        request_id=f"r{n}",
        user_message_id=f"u{n}",
        assistant_message_id=f"a{n}",
        chat_id="chat-1",
        chat_type="messages",
        user_id="u1",
        connection_id=connection_id,
        reply_to="gw",
        deadline_ms=0,
        max_tokens=100,
    )


def _reply(kind: str, seq: int, *, n: int = 1, attempt: int = 1, code: str | None = None) -> Reply:
    frame = json.dumps({"kind": kind, "seq": seq, "attempt": attempt})
    return Reply(kind, "c1", f"r{n}", f"a{n}", seq, attempt, code, frame)


async def _written(connection: Connection, socket: FakeSocket) -> list[tuple[str, int, int]]:
    await connection.drain()  # the connection's flusher writes on the next loop turns
    return [(f["kind"], f["seq"], f["attempt"]) for f in socket.sent if "kind" in f]


async def test_an_answer_is_forwarded_in_order_and_ends_the_request() -> None:
    h = Harness()
    connection, socket = h.connection()
    pending = h.inflight.open(connection, _request(), span=None)
    assert h.in_flight() == 1
    assert pending.phase is Phase.OPEN
    for kind, seq in (("start", 0), ("chunk", 1), ("chunk", 2)):
        assert h.inflight.deliver(connection, _reply(kind, seq))
    assert pending.phase is Phase.FORWARDING
    h.clock.now += 0.5
    assert h.inflight.deliver(connection, _reply("end", 3))
    assert await _written(connection, socket) == [("start", 0, 1), ("chunk", 1, 1), ("chunk", 2, 1), ("end", 3, 1)]
    assert pending.phase is Phase.FINISHED
    assert pending.timer is None
    assert connection.pending == {}
    assert h.in_flight() == 0
    assert h.metrics.window.figures().average_response_ms == pytest.approx(500.0)
    # the request is over: a late frame (a redelivery's) is nobody's here
    assert not h.inflight.deliver(connection, _reply("chunk", 4))


async def test_duplicates_and_older_attempts_are_dropped_a_newer_attempt_restarts() -> None:
    h = Harness()
    connection, socket = h.connection()
    h.inflight.open(connection, _request(), span=None)
    h.inflight.deliver(connection, _reply("start", 0))
    h.inflight.deliver(connection, _reply("chunk", 1))
    h.inflight.deliver(connection, _reply("chunk", 1))  # the broker delivered it twice
    h.inflight.deliver(connection, _reply("start", 0, attempt=2))  # the first worker died
    h.inflight.deliver(connection, _reply("chunk", 2, attempt=1))  # its last frame, late
    h.inflight.deliver(connection, _reply("chunk", 1, attempt=2))
    h.inflight.deliver(connection, _reply("end", 2, attempt=2))
    assert await _written(connection, socket) == [
        ("start", 0, 1),
        ("chunk", 1, 1),
        ("start", 0, 2),
        ("chunk", 1, 2),
        ("end", 2, 2),
    ]
    assert h.in_flight() == 0


async def test_an_error_ends_the_request_whatever_its_attempt_and_counts_its_code() -> None:
    h = Harness()
    connection, socket = h.connection()
    h.inflight.open(connection, _request(), span=None)
    h.inflight.deliver(connection, _reply("start", 0, attempt=2))
    h.inflight.deliver(connection, _reply("error", 0, attempt=1, code=ErrorCode.UPSTREAM_ERROR.value))
    assert await _written(connection, socket) == [("start", 0, 2), ("error", 0, 1)]
    assert connection.pending == {}
    assert h.metrics.errors_by_code() == {"UPSTREAM_ERROR": 1}
    assert h.metrics.window.figures().error_rate == 1.0


async def test_a_resume_waits_for_the_replay_and_the_replay_adopts_it() -> None:
    h = Harness()
    connection, socket = h.connection()
    assert h.inflight.expect_resume(connection, "a1")
    assert not h.inflight.expect_resume(connection, "a1"), "the same resume twice is one wait"
    assert h.in_flight() == 1
    other, _ = h.connection("c2")
    h.clock.now += 1.0
    with pytest.raises(Refusal) as refused:
        h.inflight.expect_resume(other, "a1")  # one resume of an answer at a time per gateway
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert refused.value.retry_after_ms == pytest.approx((RESUME_WAIT_S - 1.0) * 1000, abs=1)
    # the worker's replay names the new request id: the placeholder becomes that request
    assert h.inflight.deliver(connection, _reply("start", 0, n=1))
    pending = connection.pending["r1"]
    assert pending.phase is Phase.FORWARDING
    assert connection.resumes == {}
    assert h.inflight.expect_resume(other, "a2"), "the replay arrived: resumes are free again"
    h.inflight.deliver(connection, _reply("end", 1))
    assert await _written(connection, socket) == [("start", 0, 1), ("end", 1, 1)]


async def test_a_request_that_times_out_tells_the_client_and_stops_the_worker() -> None:
    h = Harness()
    connection, socket = h.connection()
    pending = h.inflight.open(connection, _request(), span=None)
    h.inflight.deliver(connection, _reply("start", 0))
    h.inflight.expire(connection, pending)  # what its timer does at REQUEST_TIMEOUT
    await h.inflight.close()
    await connection.drain()
    errors = [f["data"] for f in socket.sent if f.get("type") == "error"]
    assert errors == [{"code": "TIMEOUT", "message": errors[0]["message"], "messageId": "a1"}]
    assert [(c.kind, c.request_id, c.reason) for c in h.controls] == [("cancel", "r1", "timeout")]
    assert h.in_flight() == 0
    h.inflight.expire(connection, pending)  # a timer that fires after the end does nothing
    assert len(h.controls) == 1


async def test_a_resume_nobody_replays_times_out_without_a_cancel() -> None:
    h = Harness()
    connection, socket = h.connection()
    h.inflight.expect_resume(connection, "a1")
    pending = connection.resumes["a1"]
    h.inflight.expire(connection, pending)
    await connection.drain()
    [error] = [f["data"] for f in socket.sent if f.get("type") == "error"]
    assert error["code"] == "TIMEOUT"
    assert error["message"].startswith("Answer not resumed")
    assert h.controls == []
    assert h.in_flight() == 0


async def test_a_connection_that_goes_away_abandons_its_requests_without_an_outcome() -> None:
    h = Harness()
    connection, _ = h.connection()
    h.inflight.open(connection, _request(1), span=None)
    h.inflight.open(connection, _request(2), span=None)
    h.inflight.expect_resume(connection, "a9")
    assert h.in_flight() == 3
    assert h.inflight.abandon(connection)
    assert h.in_flight() == 0
    assert connection.pending == {}
    assert connection.resumes == {}
    assert h.metrics.window.figures().requests == 2
    assert h.metrics.errors_by_code() == {}
    assert not h.inflight.abandon(connection)


def test_the_door_refuses_by_drain_capacity_and_the_unauthenticated_quotas() -> None:
    door = Door(DoorLimits(max_connections=10, max_unauthenticated=3, max_unauthenticated_per_address=2))
    assert door.refusal("a", connections=0) is None
    door.wait("a")
    door.wait("a")
    per_address = door.refusal("a", connections=2)
    assert per_address is not None
    assert (per_address.code, per_address.reason) == (ErrorCode.TOO_MANY_CONNECTIONS, "per_address")
    door.wait("b")
    total = door.refusal("c", connections=3)
    assert total is not None
    assert (total.code, total.reason) == (ErrorCode.SERVER_AT_CAPACITY, "unauthenticated")
    door.admitted("a")
    assert door.refusal("a", connections=3) is None
    full = door.refusal("d", connections=10)
    assert full is not None
    assert full.reason == "capacity"
    door.accepting = False
    drained = door.refusal("d", connections=0)
    assert drained is not None
    assert drained.reason == "shutting_down"
    assert door.origin_allowed("https://anything")
    assert not Door(
        DoorLimits(
            max_connections=1,
            max_unauthenticated=1,
            max_unauthenticated_per_address=1,
            allowed_origins=("https://app",),
        )
    ).origin_allowed("https://evil")
