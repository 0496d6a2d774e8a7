"""The Dockerfile of the services: for each, what it copies exists, what it runs exists, and the build really works.

No Docker engine here, so ``test_build_steps_produce_a_standalone_virtualenv`` replays the
Dockerfile's stages for each service with the same commands on this machine: the manifests stage's
RUN, the two ``uv sync`` steps of the builder with its ENV and build argument, then checks the
virtualenv the runtime stage copies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chat_common.settings import Settings
from tests.deploy.support import (
    ROOT,
    SERVICES,
    Stage,
    build_args,
    context_files,
    expand,
    ignored,
    service_image,
    stage_env,
    workspace_members,
)


def uv_syncs(stage: Stage, args: dict[str, str]) -> list[list[str]]:
    """The ``uv sync`` lines of ``stage`` as RUN sees them: the stage's ARGs expanded."""
    declared = {ins.args for ins in stage.of("ARG")}
    assert declared >= set(args), f"{stage.name}: a RUN sees a build argument only when the stage declares it"
    syncs = [ins.words for ins in stage.of("RUN") if ins.words[:2] == ["uv", "sync"]]
    return [[expand(word, args) for word in words] for words in syncs]


@pytest.mark.parametrize("role", sorted(SERVICES))
def test_dockerfile_builds_the_member_in_two_steps_into_a_slim_non_root_image(role: str) -> None:
    service = SERVICES[role]
    stages, runtime = service_image(role)
    names = [stage.name for stage in stages]
    builder = next(stage for stage in stages if any(ins.words[:2] == ["uv", "sync"] for ins in stage.of("RUN")))

    # two uv steps from the workspace lock: third-party dependencies first, then the member
    deps, member = uv_syncs(builder, build_args(role))
    for step in (deps, member):
        assert "--locked" in step or "--frozen" in step
        assert "--no-dev" in step
        assert step[step.index("--package") + 1] == service["package"]
    assert "--no-install-workspace" in deps
    assert "--no-editable" in member, "the runtime image has the virtualenv only, not the sources"
    assert service["package"] in workspace_members()
    assert stage_env(builder)["UV_PROJECT_ENVIRONMENT"] == "/app/.venv"
    assert stage_env(builder)["UV_PYTHON_DOWNLOADS"] == "0", "the venv's python must be the base image's"
    assert runtime.base == builder.base, "same Python at the same path in builder and runtime"
    assert "slim" in runtime.base

    # every COPY --from names an earlier stage; the runtime stage takes only the virtualenv from the builder
    for index, stage in enumerate(stages):
        for ins in stage.of("COPY"):
            if "from" in ins.flags:
                assert ins.flags["from"] in names[:index], f"{stage.name}: COPY --from={ins.flags['from']}"
    from_builder = [ins.words for ins in runtime.of("COPY") if ins.flags.get("from") == builder.name]
    assert from_builder == [["/app/.venv", "/app/.venv"]]

    # context COPY sources exist and are not excluded by .dockerignore
    for stage in stages:
        for ins in stage.of("COPY"):
            if "from" not in ins.flags:
                for source in ins.words[:-1]:
                    assert source == "." or (ROOT / source).exists(), source
                    assert source == "." or not ignored(source), f"{source} is excluded by .dockerignore"

    # non-root, exec-form command of the member, a health check without curl at the real endpoint
    user = runtime.of("USER")[-1].args
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric user: Kubernetes runAsNonRoot can verify it"
    assert int(uid) != 0, "non-root user"
    command = runtime.of("CMD")[-1].exec_form()
    assert command is not None, "exec-form CMD: SIGTERM reaches the service, not a shell"
    assert command[0] == service["command"]
    assert service["command"] in workspace_members()[service["package"]]["project"]["scripts"]
    assert not runtime.of("ENTRYPOINT")
    assert runtime.of("STOPSIGNAL")[-1].args in ("SIGTERM", "15")
    check = runtime.of("HEALTHCHECK")[-1].exec_form()
    assert check == ["python", "/app/healthcheck.py", role]
    copied = {ins.words[-1]: ins.words[0] for ins in runtime.of("COPY") if "from" not in ins.flags}
    assert copied["/app/healthcheck.py"] == "deploy/docker/healthcheck.py"
    exposed = int(runtime.of("EXPOSE")[-1].args)
    assert exposed == Settings.model_fields[service["port"]].default


def test_build_context_leaves_out_the_local_virtualenv_and_secrets() -> None:
    files = {path.as_posix() for path in context_files()}
    assert "uv.lock" in files
    assert "deploy/docker/healthcheck.py" in files
    assert ".env.example" in files
    assert not any(name.startswith((".venv/", ".git/")) or "/__pycache__/" in name for name in files)
    assert ".env" not in files


def _replay(stage: Stage, root: Path, command: str, env: dict[str, str], cwd: Path) -> None:
    """Run one RUN line with the stage's absolute build folders mapped under ``root``."""
    mapped = re.sub(r"(?<![\w./-])/(manifests|app|src)\b", lambda m: f"{root}/{m.group(1)}", command)
    subprocess.run(["bash", "-euo", "pipefail", "-c", mapped], cwd=cwd, env=env, check=True, timeout=240)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("role", sorted(SERVICES))
def test_build_steps_produce_a_standalone_virtualenv(role: str, tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv is not None, "uv is needed (scripts/bootstrap.sh installs it)"
    service = SERVICES[role]
    stages, _ = service_image(role)
    manifests, builder = stages[1], stages[2]
    assert manifests.name == "manifests"
    assert builder.name == "builder"
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") and k != "VIRTUAL_ENV"}
    env["UV_PYTHON"] = sys._base_executable  # the image's python; here, the one this venv was made from

    # stage "manifests": the whole context, then its RUN picks out the manifests and the lock
    m_root = tmp_path / "manifests-stage"
    for relative in context_files():
        target = m_root / "src" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    for ins in manifests.of("RUN"):
        _replay(manifests, m_root, ins.args, env, m_root / "src")
    picked = sorted(p.relative_to(m_root / "manifests").as_posix() for p in (m_root / "manifests").rglob("*"))
    assert "uv.lock" in picked
    assert f"{service['dir']}/pyproject.toml" in picked
    assert not any(name.endswith(".py") for name in picked), "only manifests: the deps layer survives code edits"

    # stage "builder": COPY manifests, uv sync (deps only), COPY ., uv sync (the member)
    b_root = tmp_path / "builder-stage"
    work = b_root / "src"
    shutil.copytree(m_root / "manifests", work)
    build_env = {**env, **stage_env(builder), **build_args(role)}  # RUN sees a declared ARG as a variable
    build_env["UV_PROJECT_ENVIRONMENT"] = str(b_root / "app/.venv")
    # speed only: in the image the cache is a separate mount (copy) and .pyc saves start-up time
    build_env.update(UV_LINK_MODE="hardlink", UV_COMPILE_BYTECODE="0")
    runs = list(builder.of("RUN"))
    assert [ins.words[:2] for ins in runs] == [["uv", "sync"], ["uv", "sync"]]
    _replay(builder, b_root, runs[0].args, build_env, work)
    venv = b_root / "app/.venv"
    python = venv / "bin/python"
    module = service["package"].replace("-", "_")
    probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60, check=False)
    assert probe.returncode != 0, "the dependency step must not install the member yet"
    subprocess.run([python, "-c", "import pydantic, aio_pika, asyncpg"], check=True, timeout=60)

    shutil.copytree(m_root / "src", work, dirs_exist_ok=True)
    _replay(builder, b_root, runs[1].args, build_env, work)

    # the runtime stage copies only the virtualenv: it must work with the sources gone
    shutil.rmtree(work)
    shutil.rmtree(m_root)
    assert (venv / "bin" / service["command"]).is_file()
    subprocess.run([python, "-c", f"import {module}, chat_common"], check=True, timeout=60)
    dev_only = subprocess.run([python, "-c", "import pytest"], capture_output=True, timeout=60, check=False)
    assert dev_only.returncode != 0, "dev dependencies stay out of the image"
    if role == "worker":  # package data (system prompts) travels in the non-editable install
        subprocess.run(
            [
                python,
                "-c",
                "from llm_worker.prompts import load_prompts; from chat_common.settings import Settings; "
                "assert all(load_prompts(Settings()).values())",
            ],
            check=True,
            timeout=60,
            env={k: v for k, v in env.items() if k != "PROMPTS_DIR"},
        )
    # the health check script runs on the image's python (usage error → exit 1, not an import error)
    usage = subprocess.run(
        [python, ROOT / "deploy/docker/healthcheck.py"], capture_output=True, text=True, timeout=60, check=False
    )
    assert usage.returncode == 1
    assert "usage" in usage.stderr
