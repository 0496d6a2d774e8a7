"""Small in-process HTTP receivers for tests: a webhook sink and an OTLP/HTTP trace collector.

Plain asyncio (no framework): each keeps what it was sent so a test can assert on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    """Answers every POST with ``status_for(n)`` (n = index of the request) and records it."""

    requests: list[Received] = field(default_factory=list)
    fail_first: int = 0
    server: asyncio.Server | None = None
    port: int = 0
    response_body: bytes = b"{}"
    content_type: str = "application/json"

    async def start(self) -> HttpReceiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path = request_line.decode("latin-1").split()[1]
                index = len(self.requests)
                self.requests.append(Received(path, headers, body))
                status = 500 if index < self.fail_first else 200
                payload = self.response_body if status == 200 else b"{}"
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: {self.content_type}\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def json_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests if r.body]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    events: list[str]


class OtlpReceiver(HttpReceiver):
    """An OTLP/HTTP (protobuf) trace endpoint: ``/v1/traces`` bodies decoded into ``ReceivedSpan``s."""

    def __init__(self) -> None:
        super().__init__(
            response_body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    def spans(self) -> list[ReceivedSpan]:
        spans: list[ReceivedSpan] = []
        for request in self.requests:
            if request.path != "/v1/traces":
                continue
            export = ExportTraceServiceRequest()
            export.ParseFromString(request.body)
            for resource_spans in export.resource_spans:
                service = next(
                    (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        spans.append(
                            ReceivedSpan(
                                service=service,
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                kind=span.kind,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                                events=[e.name for e in span.events],
                            )
                        )
        return spans


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None
