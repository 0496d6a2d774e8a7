"""Spans of one user message on the gateway: one trace per message, not per connection.

``chat.message`` is the root of the message's trace (a fresh trace even though the WebSocket
connection lives on): the stored user message (asyncpg span) and the publish (``chat.requests
publish``, whose context rides in the AMQP headers to the worker) are its children; the reply
path adds events (``response_start``, ``first_chunk``) and a ``chat.replies receive`` span for the
final frame, never a span per chunk. Ids only, no message content.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from chat_common.envelopes import ChatRequest
from chat_common.samples import SAMPLE_ATTRIBUTE, STAGE_ATTRIBUTE

tracer = trace.get_tracer("chat_gateway")


def start_message_span(request: ChatRequest) -> Span:
    return tracer.start_span(
        "chat.message",
        context=Context(),
        kind=SpanKind.SERVER,
        attributes={
            SAMPLE_ATTRIBUTE: True,
            "chat.request_id": request.request_id,
            "chat.id": request.chat_id,
            "chat.type": request.chat_type,
            "chat.connection_id": request.connection_id,
            "chat.message_id": request.assistant_message_id,
        },
    )


def start_publish_span(exchange: str, routing_key: str, message_id: str) -> Span:
    return tracer.start_span(
        f"{exchange} publish",
        kind=SpanKind.PRODUCER,
        attributes={
            STAGE_ATTRIBUTE: "publish",
            "messaging.system": "rabbitmq",
            "messaging.operation": "publish",
            "messaging.destination.name": exchange,
            "messaging.rabbitmq.destination.routing_key": routing_key,
            "messaging.message.id": message_id,
        },
    )


def end_message_span(span: Span | None, *, error_code: str | None, outcome: str) -> None:
    if span is None or not span.is_recording():
        return
    span.set_attribute("chat.outcome", outcome)
    if error_code is not None:
        span.set_attribute("chat.error_code", error_code)
        span.set_status(Status(StatusCode.ERROR, error_code))
    span.end()


def reply_received(span: Span | None, kind: str) -> None:
    """Mark the answer's final frame arriving from the worker (one short span, not one per chunk)."""
    if span is None or not span.is_recording():
        return
    with tracer.start_as_current_span(
        "chat.replies receive",
        context=trace.set_span_in_context(span),
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "rabbitmq", "chat.reply_kind": kind},
    ):
        pass


@contextlib.contextmanager
def use_span(span: Span, *, error_code: str | None = None) -> Iterator[Span]:
    """Make the message span current; with ``error_code``, an exception ends it as failed."""
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        try:
            yield span
        except BaseException:
            if error_code is not None:
                end_message_span(span, error_code=error_code, outcome="failed")
            raise


def trace_reply(span: Span | None, kind: str, *, first_chunk: bool, final: bool, error_code: str | None) -> None:
    """The message span's part of one forwarded frame: events for the start and the first chunk; the
    final frame's ``chat.replies receive`` span, then the message span ended with the outcome."""
    if span is None or not (kind == "start" or first_chunk or final) or not span.is_recording():
        return  # most frames are later chunks: nothing to trace for them
    if kind == "start":
        span.add_event("response_start")
    elif first_chunk:
        span.add_event("first_chunk")
    elif final:
        reply_received(span, kind)
        end_message_span(span, error_code=error_code, outcome="error" if error_code else "complete")
