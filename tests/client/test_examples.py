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


# Node 22+ has a global WebSocket, Node 20.10+/21 behind --experimental-websocket (a flag Node 18 refuses
# as a bad option); Node 22+ turns it off with --no-experimental-websocket.
_HAS_WEBSOCKET = "process.exit(typeof WebSocket === 'function' ? 0 : 3)"
_WITH_GLOBAL: tuple[list[str], ...] = ([], ["--experimental-websocket"])
_WITHOUT_GLOBAL: tuple[list[str], ...] = ([], ["--no-experimental-websocket"])
_WS = ROOT / "examples" / "node_modules" / "ws" / "package.json"


def _node() -> str:
    node = shutil.which("node")
    assert node is not None, "node is needed for the JavaScript example (scripts/ensure-browser.sh installs it)"
    return node


async def _flags_where(node: str, candidates: tuple[list[str], ...], *, websocket: bool) -> list[str] | None:
    """The first of ``candidates`` under which this node has (or lacks) a global WebSocket."""
    for flags in candidates:
        code, _, _ = await _run([node, *flags, "-e", _HAS_WEBSOCKET], {})
        if code == (0 if websocket else 3):
            return flags
    return None


def _assert_ws_installed() -> None:
    assert _WS.is_file(), (
        "this Node runs the example on the ws package pinned in examples/package-lock.json: "
        "python3 scripts/fetch-ws.py installs it (scripts/test.sh does, through scripts/ensure-browser.sh)"
    )


async def _run_example(node: str, flags: list[str], gateway: ServiceProcess, user: str) -> None:
    env = {"GATEWAY_URL": gateway.extra["ws_url"], "CHAT_TOKEN": make_token(user)}
    code, out, err = await _run([node, *flags, "examples/spec-examples.mjs"], env)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("joined messages chat ")
    assert lines[1].startswith("created documents chat ")
    assert "Review my NDA" in out, "the answer (the fake model echoes the question) streamed to stdout"
    assert any(line.startswith("[answer ") and line.endswith(": stop]") for line in lines)
    assert any(line.startswith("switched to messages chat ") for line in lines)
    assert lines[-1].endswith("with 2 messages")


async def test_javascript_snippets_run_in_node(gateway: ServiceProcess) -> None:
    """As the README says for the node at hand: its WebSocket (with the flag where it needs one), else ws."""
    node = _node()
    flags = await _flags_where(node, _WITH_GLOBAL, websocket=True)
    if flags is None:  # Node 18, Node 20 before 20.10
        _assert_ws_installed()
    await _run_example(node, flags or [], gateway, "js-example-user")


async def test_javascript_snippets_run_on_ws_without_a_global_websocket(gateway: ServiceProcess) -> None:
    """Node 18's path on any Node: no global WebSocket, so the example must take the pinned ws package."""
    node = _node()
    flags = await _flags_where(node, _WITHOUT_GLOBAL, websocket=False)
    assert flags is not None, "no way to start this node without a global WebSocket"
    _assert_ws_installed()
    await _run_example(node, flags, gateway, "js-example-ws-user")


async def test_python_example_streams_an_answer(gateway: ServiceProcess) -> None:
    env = {"GATEWAY_URL": gateway.extra["ws_url"], "CHAT_TOKEN": make_token("py-example-user")}
    code, out, err = await _run([sys.executable, "examples/client.py", "[[tokens:8]] What is consideration?"], env)
    assert code == 0, err
    assert "What is consideration?" in out
    assert "joined messages chat" in err
    assert "[stop, usage" in err
