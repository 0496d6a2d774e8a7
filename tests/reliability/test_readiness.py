"""Readiness is each process's own (broker, drain, capacity), never the model's: an LLM outage leaves
``/readyz`` at 200 on every gateway while the health document reports the errors; the error-rate
rule waits for a minimum number of requests in its window."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.reliability.helpers import joined
from tests.support.client import make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess


async def get(client: httpx.AsyncClient, base: str, path: str) -> tuple[int, dict[str, Any]]:
    response = await client.get(base + path)
    return response.status_code, response.json()


async def test_an_llm_outage_leaves_every_gateway_ready_and_the_health_document_tells(rel: Cluster) -> None:
    # the shared fake model fails every question marked [[fail:500]]: an outage for this test's questions
    strict, default, worker, monitor = await asyncio.gather(
        rel.gateway(HEALTH_ERROR_RATE_MIN_REQUESTS=2),
        rel.gateway(),  # HEALTH_ERROR_RATE_MIN_REQUESTS default: 20
        rel.worker(),
        rel.monitor(),
    )
    gateways: list[ServiceProcess] = [strict, default]
    for index, gateway in enumerate(gateways):
        client, _chat = await joined(gateway.extra["ws_url"], make_token(f"rel-outage-{index}"))
        async with client:
            for attempt in range(3):
                answer = await client.ask(f"outage {index}.{attempt} [[fail:500]]")
                assert answer.error is not None, answer.frames
                assert answer.error["code"] == "UPSTREAM_ERROR", answer.error

    async with httpx.AsyncClient(timeout=5) as http:
        for gateway in gateways:
            base = gateway.extra["http_url"]
            assert await get(http, base, "/readyz") == (200, {"status": "ready", "role": "gateway", "reasons": []})
            status, alive = await get(http, base, "/livez")
            assert status == 200, alive
        # the health document is for humans and alerts: it reports the outage once the window holds enough
        status, health = await get(http, strict.extra["http_url"], "/api/websocket/health")
        assert status == 503, health
        assert health["status"] == "critical", health
        assert any("error rate" in issue for issue in health["issues"]), health
        # below the minimum number of requests (3 < 20) the same failures are no error-rate issue
        status, health = await get(http, default.extra["http_url"], "/api/websocket/health")
        assert status == 200, health
        assert not any("error rate" in issue for issue in health["issues"]), health
        # every other service has its probes too
        worker_base = f"http://127.0.0.1:{worker.extra['port']}"
        assert (await get(http, worker_base, "/readyz"))[0] == 200
        assert (await get(http, worker_base, "/livez"))[0] == 200
        assert (await get(http, monitor.extra["http_url"], "/readyz"))[0] == 200
        assert (await get(http, monitor.extra["http_url"], "/livez"))[0] == 200
