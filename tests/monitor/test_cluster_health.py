"""The monitor with real gateways and workers: heartbeats add up, a dead worker is alerted, thresholds set status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess
from tests.support.receivers import HttpReceiver
from tests.support.wait import eventually


async def get_json(url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
        return response.status_code, response.json()


def health_of(monitor: ServiceProcess) -> Callable[[], Awaitable[tuple[int, dict[str, Any]]]]:
    return lambda: get_json(monitor.extra["http_url"] + "/api/websocket/health")


def metrics_of(monitor: ServiceProcess) -> Callable[[], Awaitable[tuple[int, dict[str, Any]]]]:
    return lambda: get_json(monitor.extra["http_url"] + "/api/websocket/metrics")


async def test_heartbeats_of_two_gateways_and_a_worker_add_up(cluster: Cluster) -> None:
    await cluster.fake_openai()
    first, second = await cluster.gateway(), await cluster.gateway()
    worker = await cluster.worker()
    monitor = await cluster.monitor()
    clients = [
        await ChatClient.connect(first.extra["ws_url"]),
        await ChatClient.connect(first.extra["ws_url"]),
        await ChatClient.connect(second.extra["ws_url"]),
    ]
    try:
        # users: one user with two connections on the first gateway, another on the second
        for client, user in zip(clients, ["sum-user-a", "sum-user-a", "sum-user-b"], strict=True):
            assert (await client.join(make_token(user), "messages"))["type"] == "chat_joined"
        answers = [await client.ask(f"question {n}") for n, client in enumerate(clients)]
        assert all(answer.end is not None for answer in answers)

        # every process's latest heartbeat must be from after the answers: a gateway's sent between
        # its connect and its join counts the connection and not yet the user
        status, health = await eventually(
            health_of(monitor),
            # and the health settled: until every process's post-answer heartbeat is in, it can read 503
            accept=lambda r: (
                r[0] == 200 and r[1]["metrics"]["messagesPerMinute"] >= 3 and r[1]["metrics"]["totalUsers"] == 2
            ),
            timeout=10,
            interval=0.2,
        )
        assert status == 200
        assert health["status"] == "healthy", health
        assert health["issues"] == []
        figures = health["metrics"]
        assert set(figures) == {
            "totalConnections",
            "totalUsers",
            "messagesPerMinute",
            "averageResponseTime",
            "errorRate",
            "uptime",
        }
        assert figures["totalConnections"] == 3
        # users are counted per gateway (a user on two gateways counts on each): 1 + 1
        assert figures["totalUsers"] == 2
        assert figures["messagesPerMinute"] == 3  # 3 messages in the 60 s window
        assert figures["averageResponseTime"] > 0
        assert figures["errorRate"] == 0

        _, metrics = await eventually(
            metrics_of(monitor), accept=lambda r: r[1]["workers"][0]["requestsTotal"] >= 3, timeout=15, interval=0.2
        )
        gateways = {g["instanceId"]: g for g in metrics["gateways"]}
        assert set(gateways) == {first.extra["instance_id"], second.extra["instance_id"]}
        assert gateways[first.extra["instance_id"]]["connections"] == 2
        assert gateways[second.extra["instance_id"]]["connections"] == 1
        assert gateways[first.extra["instance_id"]]["requestsTotal"] == 2
        assert [w["instanceId"] for w in metrics["workers"]] == [worker.extra["instance_id"]]
        assert metrics["workers"][0]["requestsTotal"] == 3
        assert metrics["cluster"]["responseTime"]["count"] == 3
        assert 0 < metrics["cluster"]["responseTime"]["p50"] <= metrics["cluster"]["responseTime"]["p99"]
        assert metrics["cluster"]["memoryBytes"] > 3 * 10 * 2**20  # three Python processes
        queues = metrics["queues"]
        assert queues["known"] is True
        names = {q["name"]: q for q in queues["requestQueues"]}
        assert set(names) == {"chat.requests.documents", "chat.requests.messages"}
        assert names["chat.requests.messages"]["consumers"] == 1
        assert queues["depth"] == 0
    finally:
        for client in clients:
            await client.close()


async def test_killed_worker_is_alerted_once_and_resolved_once_when_one_returns(cluster: Cluster) -> None:
    webhook = await HttpReceiver(fail_first=1).start()  # the first delivery fails: the monitor retries
    try:
        await cluster.fake_openai()
        await cluster.gateway()
        doomed = await cluster.worker()
        monitor = await cluster.monitor(ALERT_WEBHOOK_URL=webhook.url + "/alerts", ALERT_CLEAR_DELAY=500)
        await eventually(health_of(monitor), accept=lambda r: r[1]["status"] == "healthy", timeout=15, interval=0.2)

        doomed.kill()  # SIGKILL: no farewell heartbeat
        killed_at = time.monotonic()
        status, health = await eventually(
            health_of(monitor), accept=lambda r: "no live workers" in r[1]["issues"], timeout=10, interval=0.2
        )
        noticed_s = time.monotonic() - killed_at
        print(f"SIGKILLed worker reported by the monitor's health after {noticed_s:.2f} s")
        # INSTANCE_SILENCE_TIMEOUT is 3 s in the test cluster, the monitor evaluates every second
        assert noticed_s < 3 + 2.5, noticed_s
        assert status == 503
        assert health["status"] == "critical"
        silent_key = f"instance_silent:{doomed.extra['instance_id']}"
        await eventually(
            webhook.json_bodies,
            accept=lambda bodies: (
                {(b["alert"], b["state"]) for b in bodies} >= {("no_workers", "firing"), (silent_key, "firing")}
            ),
            timeout=15,
            interval=0.2,
        )

        await cluster.worker()
        status, health = await eventually(
            health_of(monitor), accept=lambda r: r[1]["status"] == "healthy", timeout=15, interval=0.2
        )
        assert status == 200
        events = await eventually(
            webhook.json_bodies,
            accept=lambda bodies: (
                {(b["alert"], b["state"]) for b in bodies} >= {("no_workers", "resolved"), (silent_key, "resolved")}
            ),
            timeout=15,
            interval=0.2,
        )
        # a quiet period is what is tested here (no event can be waited for): nothing more arrives, each alert
        # fired once and resolved once
        await asyncio.sleep(2)
        events = webhook.json_bodies()
        delivered = [(b["alert"], b["state"]) for b in events]
        # the first POST was answered 500 and retried: the same event twice on the wire, once per state
        assert delivered[0] == delivered[1]
        once = delivered[1:]
        assert sorted(once) == sorted(
            [("no_workers", "firing"), (silent_key, "firing"), ("no_workers", "resolved"), (silent_key, "resolved")]
        ), delivered
        firing = next(b for b in events if b["alert"] == "no_workers" and b["state"] == "firing")
        assert firing["severity"] == "critical"
        assert firing["message"] == "no live workers"
        log = monitor.log_tail(200)
        assert log.count("ALERT firing [critical] no_workers") == 1
        assert log.count("ALERT resolved [critical] no_workers") == 1
        _, alerts = await get_json(monitor.extra["http_url"] + "/api/websocket/alerts")
        assert alerts["open"] == []
    finally:
        await webhook.close()


async def test_thresholds_move_the_status_as_documented(cluster: Cluster) -> None:
    thresholds = {
        "HEALTH_CAPACITY_WARNING": "0.5",
        "HEALTH_CAPACITY_CRITICAL": "0.75",
        "HEALTH_ERROR_RATE_WARNING": "0.2",
        "HEALTH_ERROR_RATE_CRITICAL": "0.6",
        "HEALTH_ERROR_RATE_MIN_REQUESTS": "3",  # the rates below are of 3 and 5 requests
    }
    await cluster.fake_openai()
    gateway = await cluster.gateway(WS_MAX_CONNECTIONS=4, **thresholds)
    worker = await cluster.worker()
    monitor = await cluster.monitor(**thresholds)
    gateway_health = lambda: get_json(gateway.extra["http_url"] + "/api/websocket/health")  # noqa: E731
    clients: list[ChatClient] = []
    try:
        for n in range(3):
            client = await ChatClient.connect(gateway.extra["ws_url"])
            clients.append(client)
            assert (await client.join(make_token(f"threshold-user-{n}"), "messages"))["type"] == "chat_joined"
            expected = ["healthy", "warning", "critical"][n]  # 1/4, 2/4 = 50 %, 3/4 = 75 % of capacity
            status, health = await eventually(
                health_of(monitor), accept=lambda r, e=expected: r[1]["status"] == e, timeout=15, interval=0.2
            )
            assert status == (503 if expected == "critical" else 200)
            if n:
                assert health["issues"] == [f"connections at {(n + 1) * 25}% of capacity ({n + 1}/4)"]
            own_status, own = await gateway_health()
            assert own["status"] == expected, own
            assert own_status == status
        await clients.pop().close()

        # error rate: 1 failure in 3 requests = 33 % > 20 % → warning; 3 in 5 = 60 % → critical
        client = clients[0]
        assert (await client.ask("fine")).end is not None
        assert (await client.ask("fine again")).end is not None
        failed = await client.ask("[[fail:500]] broken")
        assert failed.error is not None
        assert failed.error["code"] == "UPSTREAM_ERROR"
        _, health = await eventually(
            health_of(monitor), accept=lambda r: r[1]["metrics"]["errorRate"] > 0.3, timeout=15, interval=0.2
        )
        assert health["status"] == "warning"
        assert any(issue.startswith("error rate 33.3%") for issue in health["issues"]), health
        for _ in range(2):
            assert (await client.ask("[[fail:500]] broken again")).error is not None
        status, health = await eventually(
            health_of(monitor), accept=lambda r: r[1]["status"] == "critical", timeout=15, interval=0.2
        )
        assert status == 503
        assert "error rate 60.0%" in health["issues"]

        _, metrics = await get_json(monitor.extra["http_url"] + "/api/websocket/metrics")
        failed_traces = metrics["traces"]["failed"]
        assert len(failed_traces) == 3
        assert {t["errorCode"] for t in failed_traces} == {"UPSTREAM_ERROR"}
        assert all(t["jaegerUrl"].endswith("/trace/" + t["traceId"]) for t in failed_traces)
        assert all(len(t["traceId"]) == 32 for t in failed_traces)
        # the worker's log line about each failure carries the request's trace id
        worker_log = worker.log_tail(400)
        for trace in failed_traces:
            assert f"[trace={trace['traceId']}]" in worker_log
            assert f"request {trace['requestId']}: model failed" in worker_log
    finally:
        for client in clients:
            await client.close()
