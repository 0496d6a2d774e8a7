"""OpenTelemetry set-up and AMQP trace-context propagation.

Tracing exports over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the standard variable,
read by the exporter itself); without it spans are still created, so trace ids reach the logs and the
broker headers, but nothing is exported.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from chat_common.settings import ProcessSettings

logger = logging.getLogger(__name__)


def setup_tracing(
    settings: ProcessSettings,
    *,
    service: str,
    processor: SpanProcessor | None = None,
    observers: Sequence[SpanProcessor] = (),
) -> TracerProvider:
    """Install a tracer provider for this process and return it (the caller shuts it down).

    ``processor`` replaces the OTLP exporter (tests); ``observers`` are added beside it (the
    request sampler). PostgreSQL calls are traced by the asyncpg instrumentation, statements
    without their parameters (no message content in spans).
    """
    import os

    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    resource = Resource.create(
        {
            SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service),
            SERVICE_INSTANCE_ID: settings.instance_id,
        }
    )
    provider = TracerProvider(resource=resource)
    for observer in observers:
        provider.add_span_processor(observer)
    if processor is not None:
        provider.add_span_processor(processor)
    elif settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        logger.info("exporting traces over OTLP to %s", settings.otel_exporter_otlp_endpoint)
    trace.set_tracer_provider(provider)
    instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
    return provider


def trace_id_of(span: trace.Span) -> str:
    """The span's trace id as Jaeger shows it (32 hex digits), or ``""`` for a non-recording span."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def inject_headers(headers: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Put the current trace context (``traceparent``) into AMQP headers."""
    propagate.inject(headers)
    return headers


def extract_context(headers: MutableMapping[str, Any] | None) -> context.Context:
    carrier = {
        key: value.decode() if isinstance(value, bytes) else value
        for key, value in (headers or {}).items()
        if isinstance(value, str | bytes)
    }
    return propagate.extract(carrier)
