"""The examples run against the real stack: the original JavaScript snippets (node) and the Python client."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys

from tests.support.client import make_token
from tests.support.processes import ROOT, ServiceProcess


async def _run(argv: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(), err.decode()


async def test_javascript_snippets_run_in_node(gateway: ServiceProcess) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed for the JavaScript example (scripts/ensure-browser.sh installs it)"
    env = {"GATEWAY_URL": gateway.extra["ws_url"], "CHAT_TOKEN": make_token("js-example-user")}
    code, out, err = await _run([node, "--experimental-websocket", "examples/spec-examples.mjs"], env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("joined messages chat ")
    assert lines[1].startswith("created documents chat ")
    assert "Review my NDA" in out, "the answer (the fake model echoes the question) streamed to stdout"
    assert any(line.startswith("[answer ") and line.endswith(": stop]") for line in lines)
    assert any(line.startswith("switched to messages chat ") for line in lines)
    assert lines[-1].endswith("with 2 messages")


async def test_python_example_streams_an_answer(gateway: ServiceProcess) -> None:
    env = {"GATEWAY_URL": gateway.extra["ws_url"], "CHAT_TOKEN": make_token("py-example-user")}
    code, out, err = await _run([sys.executable, "examples/client.py", "[[tokens:8]] What is consideration?"], env)
    assert code == 0, err
    assert "What is consideration?" in out
    assert "joined messages chat" in err
    assert "[stop, usage" in err
