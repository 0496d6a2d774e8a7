"""Readers for the deployment files: the Dockerfile, .dockerignore, compose interpolation, settings names.

Small on purpose: they understand the subset of each format that the files in ``deploy/`` use, and
fail loudly on anything else, so that a file the tests cannot read is a failing test, not a pass.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chat_common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# The three services: workspace member folder, its package, console command, the role its health
# check takes, and the setting that holds its port.
SERVICES = {
    "gateway": {
        "dir": "services/gateway",
        "package": "chat-gateway",
        "command": "chat-gateway",
        "port": "gateway_port",
    },
    "worker": {
        "dir": "services/llm-worker",
        "package": "llm-worker",
        "command": "llm-worker",
        "port": "worker_metrics_port",
    },
    "monitor": {
        "dir": "services/monitor",
        "package": "chat-monitor",
        "command": "chat-monitor",
        "port": "monitor_port",
    },
}


def settings_env_names() -> set[str]:
    """Every environment variable the services read: Settings fields, their aliases, and OTEL_*."""
    names = {name.upper() for name in Settings.model_fields}
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        if isinstance(alias, str):
            names.add(alias.upper())
        elif choices is not None:
            names.update(str(choice).upper() for choice in choices)
    return names


# Read by libraries inside the services rather than by Settings: uvicorn's trusted proxies (gateway).
LIBRARY_ENV = {"FORWARDED_ALLOW_IPS"}


def is_service_env(name: str) -> bool:
    """A name the services understand: a setting, a standard OpenTelemetry variable (SPEC §3), or
    one that a library in the service reads itself (``LIBRARY_ENV``)."""
    return name in settings_env_names() or name.startswith("OTEL_") or name in LIBRARY_ENV


def default_of(env_name: str) -> Any:
    info = Settings.model_fields[env_name.lower()]
    return info.get_default(call_default_factory=True)


# Seconds a gateway may take after SIGTERM: its drain (1012 to clients spread over a few seconds,
# answers in flight given the shutdown grace, 25-30 s) and then uvicorn's own last shutdown step.
GATEWAY_SHUTDOWN_S = 35


def worker_shutdown_grace_s() -> float:
    """Seconds a stopping worker lets answers run before requeueing them (``SHUTDOWN_GRACE``)."""
    return float(default_of("SHUTDOWN_GRACE")) / 1000


def workspace_members() -> dict[str, dict[str, Any]]:
    """Workspace members by package name: their folder and [project] table."""
    members: dict[str, dict[str, Any]] = {}
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        for folder in sorted(ROOT.glob(pattern)):
            manifest = folder / "pyproject.toml"
            if manifest.is_file():
                project = tomllib.loads(manifest.read_text())["project"]
                members[project["name"]] = {"dir": folder.relative_to(ROOT).as_posix(), "project": project}
    return members


# ---------------------------------------------------------------------------------------------
# The Dockerfile
# ---------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        return shlex.split(self.args)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for shell form."""
        text = self.args.strip()
        if self.keyword == "HEALTHCHECK":
            assert text.startswith("CMD "), f"HEALTHCHECK without CMD: {text}"
            text = text[4:].strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        assert all(isinstance(item, str) for item in value)
        return value


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [ins for ins in self.instructions if ins.keyword == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    buffer = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buffer and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        yield (buffer + line).strip()
        buffer = ""
    if buffer:
        yield buffer.strip()


# The one Dockerfile of the three services; its build argument SERVICE picks the member.
DOCKERFILE = ROOT / "Dockerfile"


def build_args(role: str) -> dict[str, str]:
    """The build arguments that make ``DOCKERFILE`` the image of ``role``."""
    return {"SERVICE": str(SERVICES[role]["package"])}


def expand(text: str, args: Mapping[str, str]) -> str:
    """Dockerfile substitution of ``${NAME}`` and ``$NAME`` by build arguments (the forms used here)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def parse_dockerfile(path: Path, overrides: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (defaults, then ``overrides`` as ``--build-arg``) and the stages, in order.
    Flags (``--from=``) are split off."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            key, _, value = flag[2:].partition("=")
            flags[key] = value
            rest = rest.lstrip()
        if keyword == "FROM":
            words = rest.split()
            base = expand(words[0], {**args, **(overrides or {})})
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=base))
        elif not stages:
            assert keyword == "ARG", f"{path}: {keyword} before the first FROM"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, flags))
    return args, stages


def final_image(stages: list[Stage]) -> Stage:
    """The image the build produces, as one stage: the last stage and, first, every stage it builds
    ``FROM`` down to the one on an outside image, whose base it takes. The instructions stay in
    order, so a later USER, CMD or HEALTHCHECK overrides an earlier one, as in Docker's image config."""
    by_name = {stage.name: stage for stage in stages}
    chain = [stages[-1]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    instructions = [ins for stage in chain for ins in stage.instructions]
    return Stage(name=chain[-1].name, base=chain[0].base, instructions=instructions)


def service_image(role: str) -> tuple[list[Stage], Stage]:
    """The stages of ``DOCKERFILE`` built for ``role`` and the image they produce."""
    _, stages = parse_dockerfile(DOCKERFILE, build_args(role))
    return stages, final_image(stages)


def stage_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.of("ENV"):
        for word in ins.words:
            key, _, value = word.partition("=")
            env[key] = value
    return env


# ---------------------------------------------------------------------------------------------
# .dockerignore and the build context
# ---------------------------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _matches(pattern: str, path: str) -> bool:
    pattern = pattern.strip("/")
    if pattern.startswith("**/"):
        tail = pattern[3:]
        parts = path.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[i:]), tail) for i in range(len(parts)))
    return fnmatch.fnmatchcase(path, pattern)


def ignored(path: str, patterns: list[str] | None = None) -> bool:
    """Docker's rule: the last matching pattern wins; a path is also out when a parent folder is."""
    patterns = dockerignore_patterns() if patterns is None else patterns
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        verdict = False
        for pattern in patterns:
            if pattern.startswith("!"):
                if _matches(pattern[1:], prefix):
                    verdict = False
            elif _matches(pattern, prefix):
                verdict = True
        if verdict:
            return True
    return False


def context_files() -> Iterator[Path]:
    """The files ``docker build .`` sends from the repository root (relative paths)."""
    patterns = dockerignore_patterns()

    def walk(folder: Path) -> Iterator[Path]:
        for entry in sorted(folder.iterdir()):
            relative = entry.relative_to(ROOT).as_posix()
            if ignored(relative, patterns):
                continue
            if entry.is_dir() and not entry.is_symlink():
                yield from walk(entry)
            elif entry.is_file():
                yield entry.relative_to(ROOT)

    yield from walk(ROOT)


# ---------------------------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}|\$\$")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution for the forms used here: ${X}, ${X:-default}, ${X-default}, $$."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, default = match.group("name"), match.group("op"), match.group("default") or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        if name not in env:
            raise KeyError(f"${{{name}}} has no default and is not set")
        return env[name]

    return _INTERPOLATION.sub(substitute, value)


def interpolation_names(text: str) -> set[str]:
    return {m.group("name") for m in _INTERPOLATION.finditer(text) if m.group("name")}


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def service_environment(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(key): interpolate(str(value), env) for key, value in raw.items()}


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
