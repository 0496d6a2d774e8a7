"""Every service exposes Prometheus metrics at /metrics, with the figures operators chart and alert on."""

from __future__ import annotations

import json
import re

import httpx

from tests.observability.conftest import Observed
from tests.support.client import ChatClient, make_token
from tests.support.processes import ROOT
from tests.support.wait import eventually


async def test_every_service_exposes_its_prometheus_metrics(observed: Observed) -> None:
    async with await ChatClient.connect(observed.gateway.extra["ws_url"]) as client:
        assert (await client.join(make_token("prometheus-user"), "documents"))["type"] == "chat_joined"
        assert (await client.ask("count me [[tokens:5]]")).end is not None
        await client.send("bogus_frame_type", {})
        assert (await client.recv())["data"]["code"] == "INVALID_MESSAGE"

        worker = next(p for p in observed.cluster.processes if p.name == "worker")
        async with httpx.AsyncClient(timeout=5) as http:
            gateway_text = (await http.get(observed.gateway.extra["http_url"] + "/metrics")).text
            worker_text = (await http.get(f"http://127.0.0.1:{worker.extra['port']}/metrics")).text
            # the monitor may have started a moment ago: wait (bounded) until both roles' heartbeats reached it
            live = (
                'chat_monitor_live_instances{role="worker"} 1.0',
                'chat_monitor_live_instances{role="gateway"} 1.0',
            )
            monitor_response = await eventually(
                lambda: http.get(observed.monitor.extra["http_url"] + "/metrics"),
                accept=lambda response: all(m in response.text for m in live),
                timeout=15,
                interval=0.2,
                what="both roles' heartbeats at the monitor",
            )
    assert monitor_response.headers["content-type"].startswith("text/plain")
    monitor_text = monitor_response.text

    for line in (
        "chat_gateway_connections 1.0",
        'chat_gateway_frames_received_total{type="send_message"}',
        'chat_gateway_frames_sent_total{kind="chunk"}',
        "chat_gateway_refusals_total{",
        "# TYPE chat_gateway_response_seconds histogram",
        "chat_gateway_first_chunk_seconds_bucket{",
        "chat_gateway_in_flight 0.0",
        "process_resident_memory_bytes",
    ):
        assert line in gateway_text, line
    for line in (
        'chat_worker_requests_total{outcome="complete"}',
        'chat_worker_llm_tokens_total{kind="completion"}',
        "# TYPE chat_worker_first_token_seconds histogram",
        "# TYPE chat_worker_answer_seconds histogram",
        "chat_worker_in_flight 0.0",
        "process_resident_memory_bytes",
    ):
        assert line in worker_text, line
    for line in (
        'chat_monitor_live_instances{role="worker"} 1.0',
        'chat_monitor_live_instances{role="gateway"} 1.0',
        'chat_monitor_request_queue_messages{queue="chat.requests.documents"} 0.0',
        'chat_monitor_request_queue_consumers{queue="chat.requests.documents"} 1.0',
        'chat_monitor_response_seconds{quantile="p95"}',
        "chat_monitor_health_status",
        'chat_monitor_alerts_firing{severity="critical"}',
    ):
        assert line in monitor_text, line

    # every metric the Grafana dashboards chart exists in what the services expose
    exposed = gateway_text + worker_text + monitor_text
    referenced: set[str] = set()
    for dashboard in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(dashboard.read_text())["panels"]:
            for target in panel.get("targets", []):
                referenced.update(re.findall(r"\b((?:chat|process)_[a-z_]+)", target["expr"]))
    assert len(referenced) > 15
    missing = sorted(name for name in referenced if name not in exposed)
    assert missing == [], f"dashboard metrics no service exposes: {missing}"
