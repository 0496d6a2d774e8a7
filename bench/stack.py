"""Start and stop the benchmark's own processes: gateways, workers and bare baselines.

Benchmarks run apart from the tests and from ``scripts/run.sh``: their own RabbitMQ vhost
(``bench``), their own database (``chat_bench``) and ports from 3400 up, on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SECRET = "bench-secret-that-is-long-enough-for-hs256"  # noqa: S105 - a local benchmark's key
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/bench")
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/chat_bench")
GATEWAY_PORT = 3400
BARE_PORT = 3420
WORKER_PORT = 3410
LOG_DIR = Path(tempfile.gettempdir()) / "chat-bench-logs"

MACHINE_NOTE = "2 shared cores: load generator, services, RabbitMQ and PostgreSQL on the same box"


def prepare() -> None:
    """The vhost and the database of the benchmarks, created once (idempotent)."""
    subprocess.run(["rabbitmqctl", "add_vhost", "bench"], capture_output=True, check=False)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", "bench", "guest", ".*", ".*", ".*"], capture_output=True, check=False
    )
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", "create database chat_bench"],
        capture_output=True,
        check=False,
    )


def base_env(**overrides: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WS_", "OPENAI_", "LLM_", "JWT_", "FAKE_"))}
    env.update(
        AMQP_URL=AMQP_URL,
        DATABASE_URL=DATABASE_URL,
        JWT_SECRET=SECRET,
        HOST="127.0.0.1",
        LOG_LEVEL="WARNING",
        LLM_PROVIDER="fake",
        DATABASE_POOL_SIZE="20",
        HEARTBEAT_INTERVAL="5000",
    )
    env.update({key.upper(): str(value) for key, value in overrides.items()})
    return env


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Stack:
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int, ready_path: str) -> Proc:
        LOG_DIR.mkdir(exist_ok=True)
        log = LOG_DIR / f"{name}-{port}.log"
        with log.open("ab") as handle:
            process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        proc = Proc(name, process, port, log)
        self.procs.append(proc)
        wait_ready(proc, f"http://127.0.0.1:{port}{ready_path}")
        return proc

    def gateway(self, port: int = GATEWAY_PORT, **env: object) -> Proc:
        return self.start(
            "gateway",
            [str(BIN / "chat-gateway")],
            base_env(gateway_port=port, instance_id=f"bench-gw-{port}", **env),
            port,
            "/api/websocket/health",
        )

    def worker(self, index: int = 0, **env: object) -> Proc:
        port = WORKER_PORT + index
        return self.start(
            "worker",
            [str(BIN / "llm-worker")],
            base_env(worker_metrics_port=port, instance_id=f"bench-wk-{index}", **env),
            port,
            "/health",
        )

    def bare(self, port: int = BARE_PORT, **env: object) -> Proc:
        return self.start(
            "bare",
            [sys.executable, "-m", "bench.bare_server", "--port", str(port)],
            base_env(**env),
            port,
            "/health",
        )

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.process.poll() is None:
                proc.process.terminate()
        for proc in reversed(self.procs):
            try:
                proc.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()
        self.procs.clear()


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    running = Stack()
    try:
        yield running
    finally:
        running.stop_all()


def wait_ready(proc: Proc, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own local URL
                if response.status in (200, 503):
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready at {url}")


def loadtest(scenario: str, port: int, *args: object, pid: int | None = None, tag: str = "") -> dict[str, Any]:
    """Run ``chat-loadtest`` as a separate process (its own cores' worth of scheduling) and return its result."""
    out = LOG_DIR / f"loadtest-{scenario}-{tag or port}-{time.time_ns()}.json"
    argv = [
        str(BIN / "chat-loadtest"),
        scenario,
        "--url",
        f"ws://127.0.0.1:{port}/ws/chat",
        "--secret",
        SECRET,
        "--out",
        str(out),
        *map(str, args),
    ]
    if pid is not None:
        argv += ["--gateway-pid", str(pid)]
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"chat-loadtest failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def load_note() -> str:
    """The machine's load average now: the benchmarks share 2 cores with whatever else runs."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores"


def save(name: str, document: dict[str, Any]) -> Path:
    folder = ROOT / "bench" / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(document, indent=2))
    return path
