"""docker-compose.yml against the Compose Specification's JSON schema, and the Kubernetes manifests
against the Kubernetes OpenAPI schemas (strict: unknown fields are errors), for the oldest and the
newest Kubernetes versions we claim."""

from __future__ import annotations

import copy
import importlib.resources
import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.support import ROOT, load_compose, load_yaml_documents

K8S_VERSIONS = ("1.30.0", "1.37.0")
# checked field by field in test_kubernetes.py (KEDA, Gateway API) and test_alerts.py (PrometheusRule)
CUSTOM_RESOURCES = {"keda.sh/v1alpha1", "gateway.networking.k8s.io/v1", "monitoring.coreos.com/v1"}


def compose_errors(document: dict[str, Any]) -> list[str]:
    text = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema = json.loads(text.read_text())
    validator = jsonschema.validators.validator_for(schema)
    checker = validator(schema, format_checker=validator.FORMAT_CHECKER)
    return [f"{list(e.absolute_path)}: {e.message}" for e in checker.iter_errors(document)]


def test_compose_file_follows_the_compose_specification() -> None:
    assert compose_errors(load_compose()) == []


def test_the_compose_schema_check_rejects_a_wrong_file() -> None:
    broken = copy.deepcopy(load_compose())
    broken["services"]["nginx"]["depends_on"]["gateway-1"]["condition"] = "healthy"
    broken["services"]["llm-worker"]["stop_grace_peroid"] = "35s"
    assert len(compose_errors(broken)) >= 2


def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((ROOT / "deploy/k8s").glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_yaml_documents(path)
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_follow_the_kubernetes_schemas(version: str) -> None:
    for doc in manifests():
        if doc["apiVersion"] in CUSTOM_RESOURCES:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_kubernetes_schema_check_rejects_a_misspelt_field() -> None:
    deployment = next(doc for doc in manifests() if doc["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
