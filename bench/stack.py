"""Start and stop the benchmark's own processes: gateways, workers and bare baselines.

Benchmarks run apart from the tests and from ``scripts/run.sh``: their own RabbitMQ vhost
(``bench``), their own database (``chat_bench``) and ports from 3400 up, on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import math
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

from tests.support.processes import service_env

from bench import cpu

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


# Quiet logs, the built-in fake model, a pool for hundreds of answers a second, slow heartbeats.
BENCH_SETTINGS = {"log_level": "WARNING", "llm_provider": "fake", "database_pool_size": 20, "heartbeat_interval": 5000}


def base_env(**overrides: object) -> dict[str, str]:
    settings = {**BENCH_SETTINGS, **overrides}
    return service_env(amqp_url=AMQP_URL, database_url=DATABASE_URL, jwt_secret=SECRET, **settings)


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

    def start(self, name: str, argv: list[str], port: int, ready_path: str, **settings: object) -> Proc:
        """Start ``argv`` with ``base_env(**settings)``, its output in ``LOG_DIR``; return once
        ``ready_path`` on ``port`` answers."""
        LOG_DIR.mkdir(exist_ok=True)
        log = LOG_DIR / f"{name}-{port}.log"
        with log.open("ab") as handle:
            process = subprocess.Popen(
                argv, env=base_env(**settings), stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT
            )
        proc = Proc(name, process, port, log)
        self.procs.append(proc)
        wait_ready(proc, f"http://127.0.0.1:{port}{ready_path}")
        return proc

    def gateways(self, count: int, **env: object) -> list[Proc]:
        """``count`` gateways on ports 3400, 3401, ..."""
        return [self.gateway(GATEWAY_PORT + index, **env) for index in range(count)]

    def gateway(self, port: int = GATEWAY_PORT, **env: object) -> Proc:
        settings = {"gateway_port": port, "instance_id": f"bench-gw-{port}", **env}
        return self.start("gateway", [str(BIN / "chat-gateway")], port, "/api/websocket/health", **settings)

    def worker(self, index: int = 0, **env: object) -> Proc:
        port = WORKER_PORT + index
        settings = {"worker_metrics_port": port, "instance_id": f"bench-wk-{index}", **env}
        return self.start("worker", [str(BIN / "llm-worker")], port, "/health", **settings)

    def bare(self, port: int = BARE_PORT, **env: object) -> Proc:
        argv = [sys.executable, "-m", "bench.bare_server", "--port", str(port)]
        return self.start("bare", argv, port, "/health", **env)

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


def service_groups(running: Stack) -> dict[str, cpu.Finder]:
    """The processes whose CPU a run reports: our gateways and workers (or the bare endpoint),
    RabbitMQ (``beam.smp``) and PostgreSQL (every ``postgres`` process: the backends, the WAL writer,
    the checkpointer; on a machine where only the benchmark runs they all work for it)."""
    groups: dict[str, cpu.Finder] = {}
    for name in ("gateway", "worker", "bare"):
        pids = [proc.pid for proc in running.procs if proc.name == name]
        if pids:
            groups[name] = cpu.with_descendants(pids)
    groups["rabbitmq"] = cpu.by_command("beam.smp")
    groups["postgresql"] = cpu.by_command("postgres")
    return groups


def loadtest(
    scenario: str,
    ports: int | list[int],
    *args: object,
    pid: int | None = None,
    tag: str = "",
    cpu_groups: dict[str, cpu.Finder] | None = None,
) -> dict[str, Any]:
    """Run ``chat-loadtest`` as a separate process (its own cores' worth of scheduling) and return its
    result. Connections are spread over the gateways on ``ports``. With ``cpu_groups``, the CPU of
    each group and of the load tool itself (``load_generator``: its process and its generators) is
    sampled, and ``cpu_us_per_answer`` is added for the result's measured window."""
    out = LOG_DIR / f"loadtest-{scenario}-{tag or ports}-{time.time_ns()}.json"
    urls = [arg for port in ([ports] if isinstance(ports, int) else ports) for arg in ("--url", ws_url(port))]
    argv = [str(BIN / "chat-loadtest"), scenario, *urls, "--secret", SECRET, "--out", str(out), *map(str, args)]
    if pid is not None:
        argv += ["--gateway-pid", str(pid)]
    LOG_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        groups = {**(cpu_groups or {}), "load_generator": cpu.with_descendants([process.pid])}
        with cpu.CpuSampler(groups) as sampler:
            process.wait()
        stderr.seek(0)
        if process.returncode != 0 or not out.exists():
            raise RuntimeError(f"chat-loadtest failed ({process.returncode}):\n{stderr.read()[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    win = result["window"]
    result["cpu_us_per_answer"] = cpu.per_answer_us(sampler.window(win["t0"], win["t1"]), win["answers_per_s"] or 0)
    return result


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/ws/chat"


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 (nearest rank) of ``values`` in ms, rounded to 0.1 ms."""
    ordered = sorted(values)

    def rank(q: float) -> float | None:
        return round(ordered[max(1, math.ceil(q * len(ordered))) - 1], 1) if ordered else None

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99)}


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
