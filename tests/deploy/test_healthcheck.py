"""deploy/docker/healthcheck.py (the images' HEALTHCHECK) against the real services' endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.support import ROOT, SERVICES, load_yaml_documents
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess, free_port

SCRIPT = ROOT / "deploy/docker/healthcheck.py"


async def healthcheck(role: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the check as the image does: the service's own environment, python from the venv."""
    clean = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_PORT", "MONITOR_PORT", "WORKER_METRICS_PORT")}
    clean.update(HOST="127.0.0.1", **env)
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(SCRIPT), role],
        env=clean,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def port_env(role: str, port: str) -> dict[str, str]:
    return {str(SERVICES[role]["port"]).upper(): port}


@pytest.fixture
async def monitor(stack: Cluster, log_dir: Path) -> AsyncIterator[ServiceProcess]:
    """A monitor of this test's own on the session's broker (stopped at the end; the stack is untouched)."""
    own = Cluster(stack.services, log_dir)
    try:
        yield await own.monitor()
    finally:
        await own.stop_all()


async def test_gateway_and_worker_checks_pass_on_live_services(stack: Cluster) -> None:
    gateway = next(p for p in stack.processes if p.name == "gateway")
    worker = next(p for p in stack.processes if p.name == "worker")
    for role, process in (("gateway", gateway), ("worker", worker)):
        result = await healthcheck(role, **port_env(role, process.extra["port"]))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "HTTP 200" in result.stdout


async def test_monitor_check_passes_on_a_live_monitor(monitor: ServiceProcess) -> None:
    result = await healthcheck("monitor", **port_env("monitor", monitor.extra["port"]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("role", sorted(SERVICES))
async def test_checks_fail_when_nothing_answers(role: str) -> None:
    result = await healthcheck(role, **port_env(role, str(free_port())))
    assert result.returncode == 1, result.stdout


async def test_a_gateway_port_is_not_a_worker(stack: Cluster) -> None:
    """The worker check wants the worker's /readyz: the gateway's says it is a gateway, which fails."""
    gateway = next(p for p in stack.processes if p.name == "gateway")
    result = await healthcheck("worker", WORKER_METRICS_PORT=gateway.extra["port"])
    assert result.returncode == 1, result.stdout


async def test_unknown_role_is_a_usage_error() -> None:
    result = await healthcheck("database")
    assert result.returncode == 1
    assert "unknown role" in result.stderr


async def test_every_kubernetes_http_probe_answers_on_the_live_service(stack: Cluster, monitor: ServiceProcess) -> None:
    """Each httpGet probe of deploy/k8s, sent to the running service of its Deployment, answers 200."""
    live = {
        "chat-gateway": next(p for p in stack.processes if p.name == "gateway").extra["port"],
        "llm-worker": next(p for p in stack.processes if p.name == "worker").extra["port"],
        "chat-monitor": monitor.extra["port"],
    }
    probed = 0
    async with httpx.AsyncClient(timeout=5) as client:
        for path in sorted((ROOT / "deploy/k8s").glob("*.yaml")):
            for doc in load_yaml_documents(path):
                if doc.get("kind") != "Deployment":
                    continue
                port = live[doc["metadata"]["name"]]
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                        get = container.get(kind, {}).get("httpGet")
                        if get:
                            response = await client.get(f"http://127.0.0.1:{port}{get['path']}")
                            assert response.status_code == 200, (doc["metadata"]["name"], kind, get["path"])
                            probed += 1
    assert probed >= 3


def series_names(exposition: str) -> set[str]:
    """Every series name a /metrics page can have, from its ``# TYPE`` lines."""
    names: set[str] = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names.add(name)
        names.update(name + suffix for suffix in suffixes.get(kind, ()))
    return names


async def test_the_grafana_dashboard_queries_metrics_the_services_export(
    stack: Cluster, monitor: ServiceProcess
) -> None:
    gateway = next(p for p in stack.processes if p.name == "gateway")
    worker = next(p for p in stack.processes if p.name == "worker")
    exported: set[str] = set()
    async with httpx.AsyncClient(timeout=5) as client:
        for port in (gateway.extra["port"], worker.extra["port"], monitor.extra["port"]):
            exported |= series_names((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
    assert "chat_gateway_connections" in exported
    for path in sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                used = set(re.findall(r"\b(chat_[a-z_]+)\b", target["expr"]))
                assert used <= exported, f"{path.name} '{panel['title']}': {sorted(used - exported)} not exported"
