"""A short run of ``chat-loadtest`` against the real stack: every answer arrives, complete."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from chat_loadtest import procinfo
from chat_loadtest.stats import merge, percentile, summary
from tests.support.client import TEST_SECRET
from tests.support.processes import BIN, ServiceProcess


async def run_loadtest(gateway: ServiceProcess, tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "result.json"
    process = await asyncio.create_subprocess_exec(
        str(BIN / "chat-loadtest"),
        *args,
        "--url",
        gateway.extra["ws_url"],
        "--secret",
        TEST_SECRET,
        "--settle",
        "0.5",
        "--out",
        str(out),
        "--fail-on-error",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert "answered" in stdout.decode()
    assert "gateway RSS" in stderr.decode()  # the progress lines
    return dict(json.loads(out.read_text()))


async def test_rate_scenario_gets_every_answer_complete(gateway: ServiceProcess, tmp_path: Path) -> None:
    result = await run_loadtest(
        gateway, tmp_path, "baseline", "--users", "3", "--chats", "2", "--duration", "3", "--rate", "120"
    )
    connections, messages = result["connections"], result["messages"]
    assert isinstance(connections, dict)
    assert isinstance(messages, dict)
    assert connections["joined"] == connections["wanted"] == 6
    assert messages["sent"] >= 5
    assert messages["answered"] == messages["sent"]
    assert messages["incomplete"] == messages["unfinished"] == 0
    assert messages["errors"] == {}
    latency = result["latency_ms"]
    assert isinstance(latency, dict)
    assert latency["end"]["count"] == messages["sent"]
    assert 0 < latency["accepted"]["p50"] <= latency["first_chunk"]["p50"] <= latency["end"]["p50"]
    memory = result["gateway"]
    assert isinstance(memory, dict)
    assert memory["pid"] == gateway.pid  # found by its listening port
    assert memory["rss_bytes"]["connected"] > 10 * 2**20


async def test_closed_loop_across_two_processes(gateway: ServiceProcess, tmp_path: Path) -> None:
    # a burst user sends its next message as soon as an answer ends, so a fast stack can reach the user's
    # 30 messages a minute even in one second: a message refused RATE_LIMITED was never accepted, and every
    # one accepted must be answered, whole
    result = await run_loadtest(gateway, tmp_path, "burst", "--users", "4", "--duration", "1", "--processes", "2")
    messages = result["messages"]
    assert isinstance(messages, dict)
    assert result["generator_processes"] == 2
    errors = messages["errors"]
    assert isinstance(errors, dict)
    assert set(errors) <= {"RATE_LIMITED"}, errors
    assert messages["answered"] + errors.get("RATE_LIMITED", 0) == messages["sent"]
    assert messages["answered"] >= 4
    assert messages["incomplete"] == 0


def test_pid_is_found_by_listening_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        # the looking process skips itself by design (it never measures itself): look from a child
        code = f"from chat_loadtest.procinfo import pid_listening_on; print(pid_listening_on({port}))"
        found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert int(found.stdout) == os.getpid()
    assert procinfo.rss_bytes(os.getpid()) is not None
    assert procinfo.pid_listening_on(port) is None


def test_percentiles_and_merge() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([], 50) is None
    assert summary([3.0, 1.0, 2.0]) == {"count": 3, "p50": 2.0, "p95": 3.0, "p99": 3.0, "max": 3.0}
    first = {"sent": 2, "errors": {"BUSY": 1}, "end_ms": [1.0]}
    merged = merge([first, {"sent": 3, "errors": {"BUSY": 2}, "end_ms": [2.0]}])
    assert merged == {"sent": 5, "errors": {"BUSY": 3}, "end_ms": [1.0, 2.0]}
