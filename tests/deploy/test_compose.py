"""docker-compose.yml and .env.example: names, ports, images, health gates and volumes line up.

There is no Docker engine here; these tests read the files the way compose would (YAML with merge
keys, ``${VAR:-default}`` interpolation) and check each reference against what it points at.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from chat_common.settings import Settings
from tests.deploy.support import (
    DOCKERFILE,
    GATEWAY_SHUTDOWN_S,
    ROOT,
    SERVICES,
    build_args,
    default_of,
    final_image,
    interpolate,
    interpolation_names,
    is_service_env,
    load_compose,
    parse_dockerfile,
    service_environment,
    settings_env_names,
    worker_shutdown_grace_s,
)

COMPOSE = load_compose()
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
NO_ENV: dict[str, str] = {}  # `docker compose up` without a .env file


def app_services() -> dict[str, tuple[str, dict[str, Any]]]:
    """Compose services built from our Dockerfile, with the role its build argument SERVICE picks."""
    found = {}
    for name, service in COMPOSE["services"].items():
        build = service.get("build")
        if build and ROOT / build["context"] / build["dockerfile"] == DOCKERFILE:
            for role in SERVICES:
                if build.get("args") == build_args(role):
                    found[name] = (role, service)
    return found


def healthchecked(name: str) -> bool:
    service = COMPOSE["services"][name]
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False)
    build = service.get("build")
    if not build:
        return False
    _, stages = parse_dockerfile(ROOT / build["context"] / build["dockerfile"], build.get("args"))
    return bool(final_image(stages).of("HEALTHCHECK"))


def test_every_service_image_builds_from_a_dockerfile_in_the_repository() -> None:
    apps = app_services()
    assert sorted(role for role, _ in apps.values()) == ["gateway", "gateway", "monitor", "worker"]
    for name, service in COMPOSE["services"].items():
        build = service.get("build")
        if build is None:
            assert ":" in service["image"], f"{name}: pin the image tag"
            continue
        assert build["context"] == ".", "the workspace lock lives at the root: build from there"
        assert (ROOT / build["dockerfile"]).is_file()
        assert name in apps, f"{name}: its build arguments name no service: {build.get('args')}"


def test_service_environment_names_are_settings_and_the_defaults_start_the_fake_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in settings_env_names():
        monkeypatch.delenv(name, raising=False)
    for name, (_role, service) in app_services().items():
        env = service_environment(service, NO_ENV)
        unknown = [key for key in env if not is_service_env(key)]
        assert not unknown, f"{name}: {unknown} are not settings (libs/common/src/chat_common/settings.py)"
        names = settings_env_names()
        settings = Settings(**{key.lower(): value for key, value in env.items() if key in names})
        assert settings.provider == "fake", "no OPENAI_API_KEY: docker compose up answers with the fake model"
        assert settings.jwt_secret, "the gateway cannot start without a JWT secret"
        assert env_file_is_optional(service), f"{name}: .env must be optional so that compose works without it"


def env_file_is_optional(service: dict[str, Any]) -> bool:
    entries = service.get("env_file", [])
    return all(isinstance(entry, dict) and entry.get("required") is False for entry in entries)


def test_urls_point_at_compose_services_with_matching_credentials() -> None:
    services = COMPOSE["services"]
    for name, (_role, service) in app_services().items():
        env = service_environment(service, NO_ENV)
        amqp = urlsplit(env["AMQP_URL"])
        rabbit = service_environment(services[amqp.hostname], NO_ENV)
        assert (amqp.username, amqp.password) == (rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"])
        assert "management" in services[amqp.hostname]["image"]
        db = urlsplit(env["DATABASE_URL"])
        pg = service_environment(services[db.hostname], NO_ENV)
        assert (db.username, db.password, db.path.lstrip("/")) == (
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            pg["POSTGRES_DB"],
        )
        redis = urlsplit(env["REDIS_URL"])
        assert redis.hostname in services, name
        assert services[redis.hostname]["image"].startswith("redis:"), name
        otlp = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert otlp.hostname in services
        assert otlp.port == 4318, "the services export OTLP over HTTP"


def test_gateways_have_own_instance_ids_and_the_worker_scales() -> None:
    apps = app_services()
    gateways = {name: service for name, (role, service) in apps.items() if role == "gateway"}
    ids = [service_environment(service, NO_ENV)["INSTANCE_ID"] for service in gateways.values()]
    assert len(ids) == 2
    assert len(set(ids)) == 2, "each gateway process needs its own reply queue"
    worker = COMPOSE["services"]["llm-worker"]
    assert "INSTANCE_ID" not in service_environment(worker, NO_ENV), "replicas of --scale must differ"
    assert "ports" not in worker, "a fixed host port blocks --scale"
    assert "container_name" not in worker, "a fixed name blocks --scale"


def test_gateways_see_client_addresses_through_nginx_and_only_nginx_reaches_them() -> None:
    template = (ROOT / "deploy/nginx/chat.conf.template").read_text()
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in template, "nginx must overwrite a client's header"
    for name, (role, service) in app_services().items():
        if role == "gateway":
            assert service_environment(service, NO_ENV)["FORWARDED_ALLOW_IPS"] == "*", name
            assert "ports" not in service, f"{name} trusts X-Forwarded-For: it must not be published"


def test_start_order_is_health_gated() -> None:
    services = COMPOSE["services"]
    for name, (_role, service) in app_services().items():
        depends = service["depends_on"]
        assert depends["rabbitmq"]["condition"] == "service_healthy", name
        for dependency, rule in depends.items():
            assert dependency in services
            if rule["condition"] == "service_healthy":
                assert healthchecked(dependency), f"{name} waits for {dependency} to be healthy: it has no check"
    nginx = services["nginx"]
    gateways = [name for name, (role, _) in app_services().items() if role == "gateway"]
    assert all(nginx["depends_on"][gw]["condition"] == "service_healthy" for gw in gateways)


def test_nginx_template_placeholders_are_all_set_and_upstreams_match_the_gateways() -> None:
    nginx = COMPOSE["services"]["nginx"]
    env = service_environment(nginx, NO_ENV)
    template = (ROOT / "deploy/nginx/chat.conf.template").read_text()
    placeholders = set(re.findall(r"\$\{(NGINX_CHAT_[A-Z0-9_]+)\}", template))
    assert placeholders, "the template has no placeholders"
    assert placeholders <= set(env)
    assert all(re.search(env["NGINX_ENVSUBST_FILTER"], name) for name in placeholders)
    # nginx's own variables must survive the image's envsubst: none of them may match the filter
    own = set(re.findall(r"\$([a-z_][a-z0-9_]*)", template))
    assert own
    assert not any(re.search(env["NGINX_ENVSUBST_FILTER"], name) for name in own)

    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in nginx["volumes"]}
    assert mounts["/etc/nginx/templates/chat.conf.template"] == "./deploy/nginx/chat.conf.template"
    assert mounts["/etc/nginx/nginx.conf"] == "./deploy/nginx/nginx.conf"
    assert "include conf.d/chat.conf;" in (ROOT / "deploy/nginx/nginx.conf").read_text()

    servers = re.findall(r"server\s+([\w.-]+):(\d+)", env["NGINX_CHAT_GATEWAY_SERVERS"])
    gateways = {name: service for name, (role, service) in app_services().items() if role == "gateway"}
    assert sorted(host for host, _ in servers) == sorted(gateways)
    for host, port in servers:
        gateway_env = service_environment(gateways[host], NO_ENV)
        assert int(port) == int(gateway_env.get("GATEWAY_PORT", default_of("GATEWAY_PORT")))
        assert port in [str(p) for p in gateways[host].get("expose", [])]
    assert env["NGINX_CHAT_LISTEN"] == "80"
    published = [str(p) for p in nginx["ports"]]
    assert any(p.endswith(":80") for p in published)


def test_published_ports_match_the_services_settings() -> None:
    def targets(service: dict[str, Any]) -> set[int]:
        return {int(str(p).rsplit(":", 1)[1]) for p in service.get("ports", [])}

    for name, (role, service) in app_services().items():
        env = service_environment(service, NO_ENV)
        setting = str(SERVICES[role]["port"]).upper()
        port = int(env.get(setting, default_of(setting)))
        assert targets(service) <= {port}, f"{name} publishes a port it does not listen on"
        assert not service.get("expose") or [str(p) for p in service["expose"]] == [str(port)]
    jaeger = yaml.safe_load((ROOT / "deploy/jaeger/config.yaml").read_text())
    endpoints = {
        jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"],
        jaeger["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        jaeger["extensions"]["jaeger_query"]["http"]["endpoint"],
    }
    assert {int(e.rsplit(":", 1)[1]) for e in endpoints} == {4317, 4318, 16686}
    assert targets(COMPOSE["services"]["jaeger"]) == {4317, 4318, 16686}


def test_jaeger_is_v2_with_bounded_memory_storage() -> None:
    jaeger = COMPOSE["services"]["jaeger"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"])
    config = yaml.safe_load((ROOT / "deploy/jaeger/config.yaml").read_text())
    backends = config["extensions"]["jaeger_storage"]["backends"]
    storage = config["extensions"]["jaeger_query"]["storage"]["traces"]
    assert 0 < backends[storage]["memory"]["max_traces"] <= 200_000
    assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] == storage
    assert "otlp" in config["service"]["pipelines"]["traces"]["receivers"]
    mounted = [v.split(":")[0] for v in jaeger["volumes"]]
    assert "./deploy/jaeger/config.yaml" in mounted


def test_volumes_are_named_or_files_of_the_repository() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, service in COMPOSE["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert {"rabbitmq-data", "postgres-data"} <= used
    assert used == declared


def test_prometheus_and_grafana_are_an_optional_profile_with_the_dashboard_provisioned() -> None:
    services = COMPOSE["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"]
    assert all("profiles" not in s for n, s in services.items() if n not in ("prometheus", "grafana"))

    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    static = [t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]]
    apps = app_services()
    assert jobs["rabbitmq"]["static_configs"][0]["targets"] == ["rabbitmq:15692"], "RabbitMQ's own metrics"
    assert "15692" in [str(p) for p in services["rabbitmq"]["expose"]]
    for target in static:
        host, port = target.split(":")
        if host == "rabbitmq":
            continue
        role, service = apps[host]
        setting = str(SERVICES[role]["port"]).upper()
        assert int(port) == int(service_environment(service, NO_ENV).get(setting, default_of(setting)))
    dns = jobs["llm-worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["llm-worker"]
    assert dns["port"] == default_of("WORKER_METRICS_PORT")

    grafana = services["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert urlsplit(datasource["url"]).hostname == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards/chat.yml").read_text())["providers"][0]
    folder = ROOT / mounts[provider["options"]["path"]]
    dashboards = sorted(folder.glob("*.json"))
    assert dashboards, "no dashboard to provision"
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"]
        assert dashboard["title"]
        assert dashboard["panels"]
        for panel in dashboard["panels"]:
            source = panel.get("datasource") or {}
            assert source.get("uid", datasource["uid"]) in (datasource["uid"], "-- Grafana --", "${datasource}")


def published(env: dict[str, str]) -> dict[str, list[str]]:
    """Every service's published ports as compose reads them: ``[HOST_IP:]HOST_PORT:CONTAINER_PORT``."""
    found = {}
    for name, service in COMPOSE["services"].items():
        ports = [interpolate(str(spec), env) for spec in service.get("ports", [])]
        for spec in ports:
            assert "-" not in spec, f"{name}: {spec}: a port range is not read here"
        found[name] = ports
    return found


def test_compose_publishes_nothing_on_all_interfaces_by_default() -> None:
    """Dev tokens, the RabbitMQ UI (chat/chat), the monitor and OTLP: this machine only, unless asked."""
    by_default = published(NO_ENV)
    assert sum(len(ports) for ports in by_default.values()) >= 7
    for name, ports in by_default.items():
        for spec in ports:
            parts = spec.split(":")
            assert len(parts) == 3, f"{name}: {spec} has no host address: Docker binds it on 0.0.0.0"
            assert parts[0] == "127.0.0.1", f"{name}: {spec}"
    # one variable opens them all, for an operator who means it
    opened = published({"PUBLISH_HOST": "0.0.0.0"})
    assert all(spec.startswith("0.0.0.0:") for ports in opened.values() for spec in ports)


GUARD = ROOT / "deploy/nginx/10-chat-publish-guard.sh"


def run_guard(host: str | None, dev_tokens: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin"}
    if host is not None:
        env["CHAT_PUBLISH_HOST"] = host
    if dev_tokens is not None:
        env["CHAT_DEV_TOKENS_ENABLED"] = dev_tokens
    return subprocess.run(["sh", str(GUARD)], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_nginx_refuses_to_start_with_dev_tokens_on_a_public_address() -> None:
    nginx = COMPOSE["services"]["nginx"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in nginx["volumes"]}
    assert mounts["/docker-entrypoint.d/10-chat-publish-guard.sh"] == "./deploy/nginx/10-chat-publish-guard.sh"
    assert os.access(GUARD, os.X_OK), "the image's entrypoint runs only executable scripts"
    for overrides in ({}, {"PUBLISH_HOST": "0.0.0.0", "DEV_TOKENS_ENABLED": "false"}):
        env = service_environment(nginx, overrides)
        for role, service in app_services().values():
            if role == "gateway":
                assert env["CHAT_DEV_TOKENS_ENABLED"] == service_environment(service, overrides)["DEV_TOKENS_ENABLED"]
        assert run_guard(env["CHAT_PUBLISH_HOST"], env["CHAT_DEV_TOKENS_ENABLED"]).returncode == 0, overrides

    refused = run_guard("0.0.0.0", "true")
    assert refused.returncode == 1
    assert "DEV_TOKENS_ENABLED=false" in refused.stderr
    assert run_guard("203.0.113.7", "TRUE").returncode == 1
    assert run_guard("::1", "true").returncode == 0
    assert run_guard(None, None).returncode == 0


def test_stop_grace_periods_cover_graceful_shutdown() -> None:
    def seconds(text: str) -> int:
        match = re.fullmatch(r"(\d+)s", text)
        assert match, text
        return int(match.group(1))

    for name, (role, service) in app_services().items():
        if role == "gateway":
            assert seconds(service["stop_grace_period"]) >= GATEWAY_SHUTDOWN_S, name
        if role == "worker":
            assert seconds(service["stop_grace_period"]) >= worker_shutdown_grace_s() + 5, name


# ---------------------------------------------------------------------------------------------
# .env.example
# ---------------------------------------------------------------------------------------------

ASSIGNMENT = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$", re.MULTILINE)


def test_env_example_documents_every_setting_and_every_compose_variable() -> None:
    documented = dict(ASSIGNMENT.findall(ENV_EXAMPLE))
    missing_settings = settings_env_names() - set(documented)
    assert not missing_settings, f"add to .env.example ('# NAME=default'): {sorted(missing_settings)}"
    compose_vars = interpolation_names(COMPOSE_TEXT)
    assert not compose_vars - set(documented), f"undocumented: {sorted(compose_vars - set(documented))}"
    for name in documented:
        assert is_service_env(name) or name in compose_vars, f"{name} in .env.example is read by nothing"


def test_env_example_documents_each_variable_once() -> None:
    names = [name for name, _ in ASSIGNMENT.findall(ENV_EXAMPLE)]
    twice = sorted({name for name in names if names.count(name) > 1})
    assert not twice, f"documented more than once in .env.example: {twice}"


def test_env_example_shows_the_real_defaults_and_clean_value_lines() -> None:
    for name, value in ASSIGNMENT.findall(ENV_EXAMPLE):
        assert "#" not in value, f"{name}: a trailing comment would become part of the value (systemd)"
        if name.lower() not in Settings.model_fields or value == "" or name in ("JWT_SECRET", "INSTANCE_ID"):
            continue
        parsed = Settings(**{name.lower(): value})
        assert getattr(parsed, name.lower()) == default_of(name), f"{name}={value} is not the default"
    active = [line for line in ENV_EXAMPLE.splitlines() if ASSIGNMENT.match(line) and not line.startswith("#")]
    assert not active, "every line is commented: copying the file changes nothing by itself"


def test_compose_defaults_agree_with_the_env_example() -> None:
    """A compose default is the one .env.example shows, or the file says "compose: <default>"."""
    documented = dict(ASSIGNMENT.findall(ENV_EXAMPLE))
    for match in re.finditer(r"\$\{([A-Z_]+):-([^}]*)\}", COMPOSE_TEXT):
        name, default = match.groups()
        if documented[name] == default:
            continue
        block = ENV_EXAMPLE[: ENV_EXAMPLE.index(f"# {name}=")].rsplit("\n# ", 4)[-4:]
        assert any(f"compose: {default}" in line for line in block), (
            f"{name}: compose default {default!r}, .env.example {documented[name]!r} without 'compose: {default}'"
        )


def test_the_env_example_path_named_in_compose_exists() -> None:
    assert Path(ROOT / ".env.example").is_file()
    assert "cp .env.example .env" in COMPOSE_TEXT
