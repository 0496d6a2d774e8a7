"""Spans of one request on the worker, continuing the trace the gateway started.

``chat.requests.<type> process`` (CONSUMER) is the child of the gateway's publish span, whose
context rides in the AMQP headers; the request's task runs with it as the current span, so the
history query and the stored answer (asyncpg), the model call (``llm.chat`` and the HTTP request
under it) and the logs join the trace. No span per chunk, no prompt or answer text.

The OpenAI SDK in use sends its requests with ``httpx2``, which the httpx instrumentation does not
see; ``traced_http_client`` gives the SDK an HTTP client whose event hooks make one CLIENT span per
HTTP attempt (retries show as separate spans) and send ``traceparent`` to the model server.
"""

from __future__ import annotations

import contextvars
from typing import Any

import openai
from aio_pika.abc import AbstractIncomingMessage
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from chat_common.broker import PUBLISHED_HEADER, now_ms
from chat_common.samples import SAMPLE_ATTRIBUTE, STAGE_ATTRIBUTE
from chat_common.telemetry import extract_context

tracer = trace.get_tracer("llm_worker")

ERROR_OUTCOMES = {
    "upstream_error": "UPSTREAM_ERROR",
    "store_error": "INTERNAL",
    "data_error": "INTERNAL",
    "expired": "TIMEOUT",
}


def start_process_span(message: AbstractIncomingMessage) -> tuple[Span, contextvars.Context]:
    """The request's span and a context to run its task in (the span current, the gateway's trace as parent)."""
    headers = message.headers or {}
    attributes: dict[str, Any] = {
        SAMPLE_ATTRIBUTE: True,
        "messaging.system": "rabbitmq",
        "messaging.operation": "process",
        "messaging.destination.name": message.exchange or "",
        "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
        "chat.type": message.routing_key or "",
    }
    if message.message_id:
        attributes["chat.request_id"] = attributes["messaging.message.id"] = message.message_id
    published = headers.get(PUBLISHED_HEADER)
    if isinstance(published, int):
        attributes["chat.queue_wait_ms"] = max(0, now_ms() - published)
    delivery_count = headers.get("x-delivery-count")
    if isinstance(delivery_count, int):
        attributes["chat.attempt"] = delivery_count + 1
    span = tracer.start_span(
        f"{message.routing_key or 'chat.requests'} process",
        context=extract_context(headers),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )
    task_context = contextvars.copy_context()
    task_context.run(_attach, span)
    return span, task_context


def _attach(span: Span) -> None:
    from opentelemetry import context

    context.attach(trace.set_span_in_context(span))


def end_process_span(span: Span, *, outcome: str | None, requeued: bool = False) -> None:
    """End the request's span with its outcome (``requeued`` when it went back to the queue unanswered)."""
    if span.is_recording():
        if outcome is not None:
            span.set_attribute("chat.outcome", outcome)
            code = ERROR_OUTCOMES.get(outcome)
            if code is not None:
                span.set_attribute("chat.error_code", code)
                span.set_status(Status(StatusCode.ERROR, code))
        elif requeued:
            span.set_attribute("chat.outcome", "requeued")
    span.end()


def start_llm_span(*, system: str, model: str, max_tokens: int) -> Span:
    return tracer.start_span(
        "llm.chat",
        kind=SpanKind.CLIENT,
        attributes={
            STAGE_ATTRIBUTE: "llm",
            "gen_ai.system": system,
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.request.max_tokens": max_tokens,
        },
    )


def end_llm_span(
    span: Span,
    *,
    finish_reason: str | None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    error: BaseException | None = None,
) -> None:
    if finish_reason is not None:
        span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
    if prompt_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
    if completion_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def traced_http_client() -> openai.DefaultAsyncHttpxClient:
    """The SDK's default async HTTP client, with a span per HTTP attempt."""
    return openai.DefaultAsyncHttpxClient(event_hooks={"request": [_request_started], "response": [_response_received]})


_SPAN_KEY = "chat.otel_span"


async def _request_started(request: Any) -> None:
    url = request.url
    span = tracer.start_span(
        f"{request.method} {url.path}",
        kind=SpanKind.CLIENT,
        attributes={
            STAGE_ATTRIBUTE: "llm_http",
            "http.request.method": request.method,
            "server.address": url.host or "",
            "server.port": url.port or (443 if url.scheme == "https" else 80),
            "url.path": url.path,
        },
    )
    request.extensions[_SPAN_KEY] = span
    propagate.inject(request.headers, context=trace.set_span_in_context(span))


async def _response_received(response: Any) -> None:
    span = response.request.extensions.pop(_SPAN_KEY, None)
    if span is None:
        return
    span.set_attribute("http.response.status_code", response.status_code)
    if response.status_code >= 500:
        span.set_status(Status(StatusCode.ERROR, str(response.status_code)))
    span.end()
