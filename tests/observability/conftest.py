"""One cluster for the observability tests: two processes exporting traces to an in-process OTLP receiver."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, isolated_cluster
from tests.support.receivers import OtlpReceiver
from tests.support.services import Services

JAEGER_UI = "http://jaeger.example.test:16686"


@dataclasses.dataclass
class Observed:
    cluster: Cluster
    otlp: OtlpReceiver

    @property
    def gateway(self):  # type: ignore[no-untyped-def]
        return next(p for p in self.cluster.processes if p.name == "gateway")

    @property
    def monitor(self):  # type: ignore[no-untyped-def]
        return next(p for p in self.cluster.processes if p.name == "monitor")


@pytest.fixture(scope="package")
async def observed(services: Services, log_dir: Path) -> AsyncIterator[Observed]:
    otlp = await OtlpReceiver().start()
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    try:
        async with isolated_cluster(services, log_dir) as cluster:
            await cluster.fake_openai(FAKE_OPENAI_TOKENS_PER_SECOND="200", FAKE_OPENAI_FIRST_TOKEN_MS="20")
            await cluster.gateway(**tracing)
            await cluster.worker(**tracing)
            await cluster.monitor(JAEGER_UI_URL=JAEGER_UI)
            yield Observed(cluster, otlp)
    finally:
        await otlp.close()
