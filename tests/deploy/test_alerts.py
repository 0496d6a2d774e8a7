"""Prometheus alerting rules (compose and the k8s PrometheusRule) against the monitor's own rules.

The rules are generated from the monitor's thresholds (deploy/prometheus/rules.py). Here each case is
a state of the cluster: the monitor's rules (``HealthReport.check`` and the queue rules of
``chat_monitor.rules``) say which issues it has, and Prometheus's ``promtool test rules`` evaluates the
shipped rules over the gauges the monitor exports for that state. Both must name the same issues.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from chat_common.health import HealthReport
from chat_monitor.queues import QueueDepth, QueueState
from chat_monitor.rules import _check_queues
from tests.deploy.support import ROOT

sys.path.insert(0, str(ROOT / "deploy/prometheus"))
import rules as generator

T = generator.thresholds()
STEP_S = 15


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is not installed: run scripts/ensure-promtool.sh (scripts/test.sh does)"
    return found


@dataclass
class State:
    """What the monitor's gauges show, sampled every 15 s; the last sample is 'now'."""

    name: str
    connections: int = 10
    capacity: int = 1000
    p95_s: float = 0.5
    error_rate: float = 0.0
    window_requests: int = 100
    gateways: int = 2
    workers: int = 2
    silent: int = 0
    depths: list[int] | None = field(default_factory=lambda: [0, 0, 0])
    """total request-queue depth at each sample; None: the monitor cannot read the broker"""
    rss_bytes: int = 200 * 2**20
    samples: int = 3

    def monitor_keys(self) -> set[str]:
        report = HealthReport(
            total_connections=self.connections,
            total_users=self.connections,
            messages_per_minute=0,
            average_response_ms=0,
            error_rate=self.error_rate,
            uptime_ms=0,
            p95_response_ms=self.p95_s * 1000,
            window_requests=self.window_requests,
        ).check(capacity=self.capacity, thresholds=T)
        if not self.gateways:
            report.flag("critical", "no live gateways", key="no_gateways")
        if not self.workers:
            report.flag("critical", "no live workers", key="no_workers")
        if self.silent:
            report.flag("warning", "silent", key="instance_silent:gw-1")
        queues = QueueState()
        if self.depths is not None:
            now = (len(self.depths) - 1) * STEP_S
            queues.known = True
            queues.history = deque((i * STEP_S, depth) for i, depth in enumerate(self.depths))
            queues.queues = [QueueDepth("chat.requests.messages", self.depths[-1], 1)]
            _check_queues(report, queues, T, now=now)
        else:
            _check_queues(report, queues, T, now=0)
        if self.rss_bytes > T.memory_warning_bytes:
            report.flag("warning", "memory", key="memory:gw-1")
        return {issue.key.split(":")[0] for issue in report.found}

    def series(self) -> list[dict[str, str]]:
        def constant(value: float) -> str:
            return " ".join([repr(value)] * self.samples)

        found = [
            {"series": "chat_monitor_connections", "values": constant(self.connections)},
            {"series": "chat_monitor_capacity", "values": constant(self.capacity)},
            {"series": 'chat_monitor_response_seconds{quantile="p95"}', "values": constant(self.p95_s)},
            {"series": "chat_monitor_error_rate", "values": constant(self.error_rate)},
            {"series": "chat_monitor_window_requests", "values": constant(self.window_requests)},
            {"series": 'chat_monitor_live_instances{role="gateway"}', "values": constant(self.gateways)},
            {"series": 'chat_monitor_live_instances{role="worker"}', "values": constant(self.workers)},
            {"series": "chat_monitor_silent_instances", "values": constant(self.silent)},
            {"series": "chat_monitor_health_status", "values": constant(0)},
            {
                "series": 'process_resident_memory_bytes{job="chat-gateway", instance="gw-1"}',
                "values": constant(self.rss_bytes),
            },
        ]
        if self.depths is not None:
            found.append(
                {
                    "series": 'chat_monitor_request_queue_messages{queue="chat.requests.messages"}',
                    "values": " ".join(str(d) for d in self.depths),
                }
            )
        return found


CASES = [
    State("quiet"),
    State("capacity warning", connections=int(T.capacity_warning * 1000)),
    State("capacity critical", connections=int(T.capacity_critical * 1000)),
    State("capacity just under warning", connections=int(T.capacity_warning * 1000) - 1),
    State("slow answers", p95_s=T.response_p95_ms_warning / 1000 + 0.001),
    State("p95 at the threshold", p95_s=T.response_p95_ms_warning / 1000),
    State("errors warning", error_rate=T.error_rate_warning + 0.01),
    State("errors at the warning threshold", error_rate=T.error_rate_warning),
    State("errors critical", error_rate=T.error_rate_critical),
    State("errors critical on too few requests", error_rate=1.0, window_requests=T.error_rate_min_requests - 1),
    State("errors critical on just enough requests", error_rate=1.0, window_requests=T.error_rate_min_requests),
    State("no gateways", gateways=0, connections=0),
    State("no workers", workers=0),
    State("a silent instance", silent=1),
    State("backlog steady", depths=[T.queue_warning + 50] * 3),
    State("backlog growing", depths=[T.queue_warning - 50, T.queue_warning + 10, T.queue_warning + 60]),
    State("backlog shrinking", depths=[T.queue_warning + 300, T.queue_warning + 200, T.queue_warning + 100]),
    State("memory", rss_bytes=T.memory_warning_bytes + 1),
    State("broker unreadable", depths=None, samples=7),
]

EXTRA_LABELS = {
    "ChatResponseTimeWarning": {"quantile": "p95"},
    "ChatNoGateways": {"role": "gateway"},
    "ChatNoWorkers": {"role": "worker"},
    "ChatInstanceMemory": {"job": "chat-gateway", "instance": "gw-1"},
}


def promtool_test(case: State, rules: list[dict[str, Any]]) -> dict[str, Any]:
    expected = case.monitor_keys()
    eval_s = (case.samples - 1) * STEP_S
    checks = []
    for rule in rules:
        fires = rule["labels"]["key"] in expected
        labels = {**rule["labels"], **EXTRA_LABELS.get(rule["alert"], {})}
        checks.append(
            {
                "eval_time": f"{eval_s}s",
                "alertname": rule["alert"],
                "exp_alerts": [{"exp_labels": labels}] if fires else [],
            }
        )
    return {"interval": f"{STEP_S}s", "input_series": case.series(), "alert_rule_test": checks}


def test_shipped_rules_are_the_generated_ones_and_valid(tmp_path: Path) -> None:
    assert generator.main(["--check"]) == 0, "run: uv run python deploy/prometheus/rules.py"
    compose = ROOT / "deploy/prometheus/alerts.yml"
    k8s = yaml.safe_load((ROOT / "deploy/k8s/prometheusrule.yaml").read_text())
    assert k8s["kind"] == "PrometheusRule"
    (tmp_path / "k8s.yml").write_text(yaml.safe_dump(k8s["spec"]))
    for path in (compose, tmp_path / "k8s.yml"):
        result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(compose.read_text().replace("chat_monitor_error_rate >=", "chat_monitor_error_rate >=>"))
    assert subprocess.run([promtool(), "check", "rules", str(broken)], capture_output=True, timeout=60).returncode != 0


@pytest.mark.parametrize("target", ["compose", "k8s"])
def test_alerts_fire_exactly_where_the_monitor_raises_an_issue(target: str, tmp_path: Path) -> None:
    t_rules = generator.rules(T, target)
    keys = {rule["labels"]["key"] for rule in t_rules}
    for case in CASES:
        assert case.monitor_keys() <= keys, f"{case.name}: the monitor raises {case.monitor_keys() - keys}: no rule"
    assert set().union(*(case.monitor_keys() for case in CASES)) == keys, "every rule is exercised by a case"

    # annotations are templates of the live value: compared by `promtool check rules` above, left out here
    bare = [{k: v for k, v in rule.items() if k != "annotations"} for rule in t_rules]
    if target == "k8s":  # the same memory rule over the kubelet's labels
        for rule, case_rule in zip(bare, t_rules, strict=True):
            rule["expr"] = case_rule["expr"].replace(generator.INSTANCES["k8s"], generator.INSTANCES["compose"])
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "chat-monitor", "rules": bare}]}))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": f"{STEP_S}s",
        "tests": [promtool_test(case, t_rules) for case in CASES],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
