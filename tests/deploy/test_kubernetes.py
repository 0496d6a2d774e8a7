"""deploy/k8s and deploy/systemd: images, settings names, probes, ports, autoscaling and grace periods."""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from chat_common import topology
from chat_common.frames import CHAT_TYPES
from chat_common.settings import Settings
from tests.deploy.support import (
    GATEWAY_SHUTDOWN_S,
    ROOT,
    SERVICES,
    default_of,
    is_service_env,
    load_yaml_documents,
    service_image,
    worker_shutdown_grace_s,
    workspace_members,
)

K8S = ROOT / "deploy/k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
DOCS = [doc for resource in KUSTOMIZATION["resources"] for doc in load_yaml_documents(K8S / resource)]
SECRETS = load_yaml_documents(K8S / "secret.example.yaml")

ROLE_OF_IMAGE = {info["package"]: role for role, info in SERVICES.items()}


def kind(name: str) -> list[dict[str, Any]]:
    return [doc for doc in DOCS if doc["kind"] == name]


def named(kind_name: str, name: str) -> dict[str, Any]:
    return next(doc for doc in DOCS if doc["kind"] == kind_name and doc["metadata"]["name"] == name)


def deployment_of(role: str) -> dict[str, Any]:
    for deployment in kind("Deployment"):
        if ROLE_OF_IMAGE.get(deployment["spec"]["template"]["spec"]["containers"][0]["image"]) == role:
            return deployment
    raise AssertionError(f"no Deployment runs the {role} image")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def explicit_env(c: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in c.get("env", [])}


def config_data() -> dict[str, str]:
    return dict(named("ConfigMap", "chat-config")["data"])


def test_every_resource_exists_and_parses() -> None:
    for resource in KUSTOMIZATION["resources"]:
        assert (K8S / resource).is_file(), resource
    kinds = {doc["kind"] for doc in DOCS}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "ScaledObject"} <= kinds
    for doc in DOCS:
        assert doc["apiVersion"]
        assert doc["metadata"]["name"]


def test_images_are_built_from_the_service_dockerfiles() -> None:
    images = {image["name"] for image in KUSTOMIZATION["images"]}
    assert images == set(ROLE_OF_IMAGE)
    for role in SERVICES:
        c = container(deployment_of(role))
        assert c["image"] in images
        _, image = service_image(role)
        uid = int(image.of("USER")[-1].args.split(":")[0])
        pod_security = deployment_of(role)["spec"]["template"]["spec"]["securityContext"]
        assert pod_security["runAsNonRoot"] is True
        assert pod_security["runAsUser"] == uid


def test_env_names_are_settings() -> None:
    for name in config_data():
        assert is_service_env(name), f"ConfigMap key {name} is not a setting"
    secret = next(doc for doc in SECRETS if doc["metadata"]["name"] == "chat-secrets")
    for name in secret["stringData"]:
        assert is_service_env(name), f"Secret key {name} is not a setting"
    for role in SERVICES:
        c = container(deployment_of(role))
        for name in explicit_env(c):
            assert is_service_env(name), f"{role}: env {name} is not a setting"
        sources = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in c["envFrom"]}
        assert sources == {"configMapRef": "chat-config", "secretRef": "chat-secrets"}


def test_production_values_of_the_spec_are_configured() -> None:
    data = config_data()
    assert {key: int(data[key]) for key in data if key.startswith("WS_")} == {
        "WS_MAX_CONNECTIONS": 3000,
        "WS_MAX_CONNECTIONS_PER_USER": 3,
        "WS_RATE_LIMIT_MAX_MESSAGES": 20,
        "WS_CLEANUP_INTERVAL": 180000,
        "WS_INACTIVE_TIMEOUT": 900000,
    }
    assert "REDIS_URL" in next(doc for doc in SECRETS if doc["metadata"]["name"] == "chat-secrets")["stringData"]


@pytest.mark.parametrize("role", sorted(SERVICES))
def test_ports_and_probes_point_at_real_endpoints(role: str) -> None:
    deployment = deployment_of(role)
    c = container(deployment)
    ports = {port["name"]: port["containerPort"] for port in c["ports"]}
    setting = str(SERVICES[role]["port"]).upper()
    listen = int(explicit_env(c).get(setting, default_of(setting)))
    assert list(ports.values()) == [listen], f"{role}: containerPort differs from {setting}"

    readiness, liveness = c["readinessProbe"], c["livenessProbe"]
    for probe in (readiness, liveness):
        target = probe.get("httpGet") or probe.get("tcpSocket")
        assert target["port"] in ports
    # readiness is this process's own (broker, drain, capacity), never the cluster's or the model's health
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["path"] == "/livez", "a broker outage must not restart pods: liveness is the loop only"

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == listen


def test_services_select_the_pods_and_target_named_ports() -> None:
    for service in kind("Service"):
        selector = service["spec"]["selector"]
        matches = [
            d for d in kind("Deployment") if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, service["metadata"]["name"]
        names = {port["name"] for port in container(matches[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names
    for ingress in kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = named("Service", backend["name"])
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
        annotations = ingress["metadata"]["annotations"]
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
        assert ingress["spec"]["tls"], "TLS (wss) terminates at the ingress"


def test_workers_scale_on_request_queue_length_per_pod_concurrency() -> None:
    scaled = kind("ScaledObject")
    assert len(scaled) == 1
    spec = scaled[0]["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment_of("worker")["metadata"]["name"]
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq"
    assert meta["mode"] == "QueueLength"
    concurrency = int(config_data().get("WORKER_CONCURRENCY", default_of("WORKER_CONCURRENCY")))
    assert int(meta["value"]) == concurrency, "value = requests one worker pod takes at once"
    # the management API counts unacknowledged (in-progress) requests too, and sums both queues
    assert meta["protocol"] == "http"
    assert meta["useRegex"] == "true"
    assert meta["operation"] == "sum"
    pattern = re.compile(meta["queueName"])
    for chat_type in CHAT_TYPES:
        assert pattern.fullmatch(topology.request_queue_name(chat_type))
    assert not pattern.fullmatch(topology.DEAD_LETTER_QUEUE)
    auth = named("TriggerAuthentication", trigger["authenticationRef"]["name"])
    ref = auth["spec"]["secretTargetRef"][0]
    secret = next(doc for doc in SECRETS if doc["metadata"]["name"] == ref["name"])
    assert secret["stringData"][ref["key"]].startswith("http://")


def test_gateways_autoscale_and_keep_capacity_during_rollouts() -> None:
    gateway = deployment_of("gateway")
    (hpa,) = kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert budget_of(gateway)["spec"]["maxUnavailable"] == 1


def selects(selector: dict[str, Any], deployment: dict[str, Any]) -> bool:
    return bool(selector["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items())


def budget_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (budget,) = [pdb for pdb in kind("PodDisruptionBudget") if selects(pdb["spec"]["selector"], deployment)]
    return budget


def autoscaled() -> dict[str, int]:
    """Deployment name -> the floor its autoscaler (HPA or KEDA ScaledObject) keeps."""
    floors = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa["spec"]["minReplicas"] for hpa in kind("HorizontalPodAutoscaler")
    }
    for scaled in kind("ScaledObject"):
        floors[scaled["spec"]["scaleTargetRef"]["name"]] = scaled["spec"]["minReplicaCount"]
    return floors


def test_no_replicas_under_an_autoscaler() -> None:
    """`kubectl apply -k` would reset an autoscaled count to spec.replicas, cutting pods mid-day."""
    floors = autoscaled()
    assert set(floors) == {deployment_of("gateway")["metadata"]["name"], deployment_of("worker")["metadata"]["name"]}
    for deployment in kind("Deployment"):
        name = deployment["metadata"]["name"]
        if name in floors:
            assert "replicas" not in deployment["spec"], f"{name} is autoscaled: drop spec.replicas"
            assert floors[name] >= 1
        else:
            assert deployment["spec"].get("replicas", 1) == 1, name


def test_every_deployment_has_a_disruption_budget_that_lets_drains_proceed() -> None:
    floors = autoscaled()
    for deployment in kind("Deployment"):
        spec = budget_of(deployment)["spec"]
        floor = floors.get(deployment["metadata"]["name"], deployment["spec"].get("replicas", 1))
        if "minAvailable" in spec:
            assert int(spec["minAvailable"]) < floor, "a budget nobody can satisfy blocks node drains for good"
        else:
            assert int(spec["maxUnavailable"]) >= 1


@pytest.mark.parametrize("role", ["gateway", "worker"])
def test_scaled_pods_spread_over_zones_and_nodes(role: str) -> None:
    deployment = deployment_of(role)
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in constraints:
        assert selects(constraint["labelSelector"], deployment)
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway", "a hard rule leaves pods pending on small clusters"
        assert constraint["maxSkew"] == 1


def test_only_the_ingress_and_prometheus_reach_the_gateways() -> None:
    gateway = deployment_of("gateway")
    (policy,) = [p for p in kind("NetworkPolicy") if selects(p["spec"]["podSelector"], gateway)]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    names = {port["name"] for port in container(gateway)["ports"]}
    allowed: set[str] = set()
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without 'from' admits every pod in the cluster"
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, peer
            selector = peer["namespaceSelector"]
            for expression in selector.get("matchExpressions", []):
                assert expression["key"] == "kubernetes.io/metadata.name"
                assert expression["operator"] == "In"
                allowed.update(expression["values"])
            allowed.update(v for k, v in selector.get("matchLabels", {}).items() if k == "kubernetes.io/metadata.name")
        assert {port["port"] for port in rule["ports"]} <= names
    assert "ingress-nginx" in allowed
    assert "monitoring" in allowed


def test_httproute_routes_like_the_ingress() -> None:
    (route,) = load_yaml_documents(K8S / "httproute.yaml")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["kind"] == "HTTPRoute"
    assert "httproute.yaml" not in KUSTOMIZATION["resources"], "it needs the Gateway API CRDs: applied separately"
    (ingress,) = kind("Ingress")
    assert route["spec"]["hostnames"] == [rule["host"] for rule in ingress["spec"]["rules"]]
    by_ingress = {
        (path["path"], path["pathType"]): path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    kinds = {"Prefix": "PathPrefix", "Exact": "Exact"}
    routed = {}
    for rule in route["spec"]["rules"]:
        (match,) = rule["matches"]
        (backend,) = rule["backendRefs"]
        routed[(match["path"]["value"], match["path"]["type"])] = backend
    assert set(routed) == {(path, kinds[path_type]) for path, path_type in by_ingress}
    for (path, path_type), service in by_ingress.items():
        backend = routed[(path, kinds[path_type])]
        assert backend["name"] == service["name"]
        svc = named("Service", service["name"])
        (port,) = [p for p in svc["spec"]["ports"] if p["name"] == service["port"]["name"]]
        assert backend["port"] == port["port"]


def test_termination_grace_matches_graceful_shutdown() -> None:
    if "shutdown_grace" in Settings.model_fields:  # the drain's grace plus uvicorn's own final 10 s
        assert default_of("SHUTDOWN_GRACE") / 1000 + 10 <= GATEWAY_SHUTDOWN_S
    gateway = deployment_of("gateway")
    pre_stop = container(gateway)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= int(pre_stop[1]) + GATEWAY_SHUTDOWN_S
    worker = deployment_of("worker")
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= worker_shutdown_grace_s() + 5
    for role in SERVICES:
        assert explicit_env(container(deployment_of(role)))["INSTANCE_ID"] == {
            "fieldRef": {"fieldPath": "metadata.name"}
        }, "each pod its own instance id and reply queue"


# ---------------------------------------------------------------------------------------------
# systemd: several processes per host
# ---------------------------------------------------------------------------------------------

UNITS = sorted((ROOT / "deploy/systemd").glob("*.service"))


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_systemd_units_run_one_process_with_its_own_instance_id(path: Path) -> None:
    unit = read_unit(path)
    service = unit["Service"]
    assert service["User"] != "root"
    argv = service["ExecStart"].split()
    assert argv[0] == "/usr/bin/env", "env(1) execs the service: SIGTERM reaches it directly"
    assignments = dict(word.split("=", 1) for word in argv[1:-1])
    assert all(is_service_env(name) for name in assignments)
    command = Path(argv[-1]).name
    scripts = {s for member in workspace_members().values() for s in member["project"].get("scripts", {})}
    assert command in scripts
    role = next(role for role, info in SERVICES.items() if info["command"] == command)
    assert "INSTANCE_ID" in assignments
    if path.name.endswith("@.service"):  # a template: the instance name is the port
        port_setting = str(SERVICES[role]["port"]).upper()
        assert assignments[port_setting] == "%i"
        assert "%i" in assignments["INSTANCE_ID"]
        assert "%H" in assignments["INSTANCE_ID"]
    stop = int(service["TimeoutStopSec"])
    if role == "gateway":
        assert stop >= GATEWAY_SHUTDOWN_S + 5
        assert int(service["LimitNOFILE"]) >= 65536
    if role == "worker":
        assert stop >= worker_shutdown_grace_s() + 5
    assert service["EnvironmentFile"] == "/etc/chat/chat.env"


def test_both_templates_exist_for_several_processes_per_host() -> None:
    names = {path.name for path in UNITS}
    assert {"chat-gateway@.service", "llm-worker@.service", "chat-monitor.service"} <= names
