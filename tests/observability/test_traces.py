"""One trace per user message, gateway → broker → worker → OpenAI → back, received over real OTLP/HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from tests.observability.conftest import JAEGER_UI, Observed
from tests.support.client import ChatClient, make_token
from tests.support.receivers import ReceivedSpan
from tests.support.wait import eventually

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # opentelemetry.proto SpanKind values


async def spans_of_trace(observed: Observed, trace_id: str, *, timeout: float = 10) -> list[ReceivedSpan]:
    """The trace's spans once both services have exported theirs (each side's root span ends last there)."""

    def complete() -> list[ReceivedSpan]:
        spans = [s for s in observed.otlp.spans() if s.trace_id == trace_id]
        assert {"chat.message", "messages process"} <= {s.name for s in spans}, [
            (s.service, s.name) for s in observed.otlp.spans()
        ]
        return spans

    spans: list[ReceivedSpan] = await eventually(complete, timeout=timeout, interval=0.2, what=f"trace {trace_id}")
    return spans


async def root_span(observed: Observed, message_id: str, *, timeout: float = 10) -> ReceivedSpan:
    """The gateway's ``chat.message`` span of the answer ``message_id`` (exactly one)."""

    def roots() -> list[ReceivedSpan]:
        return [
            s
            for s in observed.otlp.spans()
            if s.name == "chat.message" and s.attributes.get("chat.message_id") == message_id
        ]

    found = await eventually(roots, timeout=timeout, interval=0.2, what=f"the chat.message span of {message_id}")
    assert len(found) == 1, "one root span per message"
    return found[0]


async def test_one_message_is_one_trace_across_gateway_and_worker(observed: Observed) -> None:
    secret = "confidential question about clause 7"
    async with await ChatClient.connect(observed.gateway.extra["ws_url"]) as client:
        assert (await client.join(make_token("trace-user"), "messages"))["type"] == "chat_joined"
        answer = await client.ask(f"{secret} [[tokens:200]]")
        assert answer.end is not None
        assert len(answer.chunks) >= 8
        second = await client.ask("another question [[tokens:3]]")
        assert second.end is not None
        assert len(second.chunks) <= 2

    root = await root_span(observed, answer.end["messageId"])
    spans = await spans_of_trace(observed, root.trace_id)
    by_name = {s.name: s for s in spans}

    # the message's root is a root (not a child of a per-connection span) on the gateway
    assert root.parent_span_id == ""
    assert root.service == "chat-gateway"
    assert root.kind == SERVER
    assert "first_chunk" in root.events
    assert "response_start" in root.events

    publish = by_name["chat.requests publish"]
    assert publish.service == "chat-gateway"
    assert publish.kind == PRODUCER
    assert publish.parent_span_id == root.span_id

    process = by_name["messages process"]
    assert process.service == "llm-worker"
    assert process.kind == CONSUMER
    assert process.parent_span_id == publish.span_id, "the worker continues the context from the AMQP headers"
    assert process.attributes["chat.request_id"] == root.attributes["chat.request_id"]
    assert process.attributes["chat.outcome"] == "complete"

    llm = by_name["llm.chat"]
    assert llm.service == "llm-worker"
    assert llm.kind == CLIENT
    assert llm.parent_span_id == process.span_id
    assert llm.attributes["gen_ai.request.model"] == "fake-model"
    assert llm.attributes["gen_ai.usage.output_tokens"] > 0
    assert "first_token" in llm.events
    http_spans = [s for s in spans if s.name.startswith("POST")]
    assert len(http_spans) == 1, "one HTTP request to the model"
    assert http_spans[0].parent_span_id == llm.span_id

    db = [s for s in spans if s.attributes.get("db.system") == "postgresql" or s.attributes.get("db.system.name")]
    assert {s.service for s in db} == {"chat-gateway", "llm-worker"}, "asyncpg spans on both sides"
    assert all(s.parent_span_id in (root.span_id, process.span_id) for s in db)

    back = by_name["chat.replies receive"]
    assert back.parent_span_id == root.span_id
    assert back.kind == CONSUMER

    # no message content anywhere in the spans
    for span in spans:
        assert all(secret not in str(value) for value in span.attributes.values()), span

    # the second message has a trace of its own, with as many spans though it had far fewer chunks
    other = await root_span(observed, second.end["messageId"])
    assert other.trace_id != root.trace_id
    other_spans = await spans_of_trace(observed, other.trace_id)
    assert len(other_spans) == len(spans), "no span per chunk"

    # the monitor lists the request with both sides' stage timings, linked to Jaeger
    async def listed() -> dict[str, Any] | None:
        async with httpx.AsyncClient(timeout=5) as http:
            metrics = (await http.get(observed.monitor.extra["http_url"] + "/api/websocket/metrics")).json()
        entry = next((t for t in metrics["traces"]["slowest"] if t["traceId"] == root.trace_id), None)
        # the gateway and the worker report with their own heartbeats: wait for both sides
        if entry is None or not {"worker.total", "gateway.total"} <= entry["stages"].keys():
            return None
        return dict(entry)

    entry = await eventually(listed, timeout=10, interval=0.3, what="the trace listed with both sides' stages")
    assert entry is not None
    assert entry["jaegerUrl"] == f"{JAEGER_UI}/trace/{root.trace_id}"
    assert entry["errorCode"] is None
    stages = entry["stages"]
    for stage in ("gateway.db", "gateway.publish", "gateway.first_chunk", "gateway.total", "worker.queue_wait"):
        assert stage in stages, stages
    for stage in ("worker.db", "worker.llm", "worker.first_token", "worker.total"):
        assert stage in stages, stages
    assert stages["gateway.total"] >= stages["worker.llm"] > 0
