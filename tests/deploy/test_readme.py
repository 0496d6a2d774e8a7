"""The README's Deployment and Operations sections: every command and file they name exists."""

from __future__ import annotations

import re

from tests.deploy.support import ROOT, interpolate, load_compose, workspace_members

README = (ROOT / "README.md").read_text()
COMPOSE = load_compose()
PATH = re.compile(r"(?<![\w/.:-])((?:deploy|services|libs|tests|scripts|examples|bench|docs)/[\w.\-/*@]*[\w*/])")
ROOT_FILES = re.compile(r"(?<![\w/.-])(docker-compose\.yml|\.env\.example|uv\.lock)\b")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


SECTIONS = section("Deployment") + section("Operations")


def host_port(service: str, container_port: int) -> int:
    for mapping in COMPOSE["services"][service]["ports"]:
        published, target = interpolate(str(mapping), {}).rsplit(":", 1)
        if int(target) == container_port:
            return int(published.rsplit(":", 1)[-1])  # [HOST_IP:]HOST_PORT
    raise AssertionError(f"{service} does not publish {container_port}")


def test_every_file_the_sections_name_exists() -> None:
    named = set(PATH.findall(SECTIONS)) | set(ROOT_FILES.findall(SECTIONS))
    assert len(named) > 15, named
    for path in sorted(named):
        matches = list(ROOT.glob(path.rstrip("/"))) if "*" in path else [ROOT / path]
        assert matches, f"README names {path}: nothing matches"
        assert all(match.exists() for match in matches), f"README names {path}, which does not exist"


def test_compose_commands_name_real_services_profiles_and_commands() -> None:
    commands = re.findall(r"docker compose [^\n`]*", SECTIONS)
    assert any(c.startswith("docker compose up") for c in commands)
    services = COMPOSE["services"]
    profiles = {p for service in services.values() for p in service.get("profiles", [])}
    scripts = {s for member in workspace_members().values() for s in member["project"].get("scripts", {})}
    for command in commands:
        for name in re.findall(r"--scale ([\w-]+)=\d+", command):
            assert name in services, command
        for profile in re.findall(r"--profile ([\w-]+)", command):
            assert profile in profiles, command
        for name in re.findall(r"--no-deps ([\w-]+)", command):
            assert name in services, command
        for name, script in re.findall(r"exec (?:-T )?([\w-]+) ([\w-]+)", command):
            assert name in services, command
            if "build" in services[name]:  # our images: one of the workspace's console commands
                assert script in scripts, command


def test_urls_and_ports_match_the_compose_defaults() -> None:
    assert f"ws://localhost:{host_port('nginx', 80)}/ws/chat" in SECTIONS
    assert f"http://localhost:{host_port('monitor', 3100)}/api/websocket/health" in SECTIONS
    for service, port in (("jaeger", 16686), ("rabbitmq", 15672), ("prometheus", 9090), ("grafana", 3000)):
        assert f":{host_port(service, port)}" in SECTIONS, f"{service} port"


def test_systemd_and_kubernetes_commands_name_real_units_and_files() -> None:
    for template, _instance in re.findall(r"\b([\w-]+)@(\d+)\b", SECTIONS):
        assert (ROOT / "deploy/systemd" / f"{template}@.service").is_file(), template
    for unit in re.findall(r"enable --now [^\n]*", SECTIONS):
        for name in unit.split()[2:]:
            plain = ROOT / "deploy/systemd" / f"{name}.service"
            templated = ROOT / "deploy/systemd" / f"{name.split('@')[0]}@.service"
            assert plain.is_file() or templated.is_file(), name
    for folder in re.findall(r"kubectl apply -k ([\w/]+)", SECTIONS):
        assert (ROOT / folder / "kustomization.yaml").is_file()
    for dockerfile, _tag in re.findall(r"docker build -f (\S+) -t (\S+) \.", SECTIONS):
        assert (ROOT / dockerfile).is_file()
