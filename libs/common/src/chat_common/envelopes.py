"""Messages that cross the broker between gateways, workers and the monitor.

Requests are JSON bodies (``ChatRequest``). Replies keep the gateway's hot path free of JSON work:
the routing facts ride in AMQP headers (``ReplyHeaders``) and the body is the client frame already
encoded by the worker, forwarded to the WebSocket as it is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from chat_common.frames import ChatType

ReplyKind = Literal["start", "chunk", "end", "error"]
TERMINAL_KINDS: frozenset[str] = frozenset({"end", "error"})


class ChatRequest(BaseModel):
    """One user message to answer. ``request_id`` is the idempotency key of the answer."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    user_message_id: str
    assistant_message_id: str
    chat_id: str
    chat_type: ChatType
    user_id: str
    connection_id: str
    reply_to: str
    """routing key of the gateway process's reply queue on ``chat.replies``."""
    deadline_ms: int
    """epoch ms after which nobody waits for the answer any more."""
    max_tokens: int


CancelReason = Literal["cancelled", "disconnected", "timeout"]


class ControlMessage(BaseModel):
    """Broadcast to every worker on ``chat.control``.

    ``cancel``: stop the answer for ``request_id``, or every answer streaming to ``connection_id``.
    ``disconnected`` is not acted on at once: the worker waits ``RESUME_GRACE`` for a ``resume``.
    ``resume``: the worker holding the answer ``message_id`` of ``user_id`` sends it from now on to
    ``connection_id`` on the gateway ``reply_to``, replaying the chunks after ``last_seq`` (of the
    delivery ``attempt`` the client saw) first.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["cancel", "resume"]
    request_id: str | None = None
    connection_id: str | None = None
    reason: CancelReason = "cancelled"
    message_id: str | None = None
    user_id: str | None = None
    reply_to: str | None = None
    last_seq: int = -1
    attempt: int = 1


class ReplyHeaders(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ReplyKind
    connection_id: str
    request_id: str
    message_id: str
    seq: int
    attempt: int = 1
    """delivery of the request that produced this frame; a higher one restarts the answer."""
    code: str | None = None
    """error code of an ``error`` frame."""

    def to_amqp(self) -> dict[str, Any]:
        headers: dict[str, Any] = {
            "k": self.kind,
            "c": self.connection_id,
            "r": self.request_id,
            "m": self.message_id,
            "s": self.seq,
            "a": self.attempt,
        }
        if self.code is not None:
            headers["e"] = self.code
        return headers

    @classmethod
    def from_amqp(cls, headers: dict[str, Any]) -> ReplyHeaders:
        def text(key: str) -> str:
            value = headers[key]
            return value.decode() if isinstance(value, bytes) else str(value)

        return cls(
            kind=text("k"),
            connection_id=text("c"),
            request_id=text("r"),
            message_id=text("m"),
            seq=int(headers["s"]),
            attempt=int(headers.get("a", 1)),
            code=text("e") if "e" in headers else None,
        )


class RequestSample(BaseModel):
    """One finished request as one process saw it: for the monitor's slowest and failed lists.

    ``stages`` are milliseconds by stage name (``db``, ``publish``, ``queue_wait``, ``first_token``,
    ``llm``, ``first_chunk``, ...), taken from the request's spans; no message content.
    """

    trace_id: str
    request_id: str
    chat_type: str = ""
    started_ms: int
    total_ms: float
    stages: dict[str, float] = {}
    error_code: str | None = None


class Heartbeat(BaseModel):
    """What every gateway and worker publishes every ``HEARTBEAT_INTERVAL`` ms.

    Counters (``*_total``) are cumulative since the process started, so a lost heartbeat loses no
    count; lists (``recent_*``, samples) cover the time since the previous heartbeat.
    """

    instance_id: str
    role: Literal["gateway", "worker"]
    timestamp_ms: int
    started_ms: int
    connections: int = 0
    users: int = 0
    cluster_users: int | None = None
    """gateway with ``REDIS_URL``: distinct users with a live connection slot on any gateway, counted
    in Redis (exact as of the gateway's last slot refresh); ``None`` without Redis or while it is away."""
    max_connections: int = 0
    in_flight: int = 0
    concurrency: int = 0
    requests_total: int = 0
    errors_total: int = 0
    """requests that ended in an error frame (any code) since start."""
    errors_by_code: dict[str, int] = {}
    response_time_sum_ms: float = 0.0
    response_time_count: int = 0
    recent_response_ms: list[float] = []
    """answer times (request to ``response_end``) since the previous heartbeat, capped."""
    recent_first_chunk_ms: list[float] = []
    """gateway: request to first chunk; worker: request taken to the model's first token."""
    tokens_total: dict[str, int] = {}
    """worker: LLM tokens by kind (``prompt``, ``completion``)."""
    rss_bytes: int = 0
    cpu_seconds: float = 0.0
    broker_connected: bool = True
    slow_requests: list[RequestSample] = []
    failed_requests: list[RequestSample] = []
    stopping: bool = False
    """the last heartbeat of a process shutting down in order: the monitor forgets it without an alert."""
