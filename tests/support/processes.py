"""Run the real services as child processes on free ports, and stop or kill them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.wait import eventually

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


# What configures the services: a developer's shell must not change a test's or a benchmark's run.
SERVICE_ENV_PREFIXES = ("WS_", "OPENAI_", "LLM_", "JWT_", "FAKE_")


def service_env(*, amqp_url: str, database_url: str, jwt_secret: str, **settings: object) -> dict[str, str]:
    """The environment of a service process a test or a benchmark starts: this process's without the
    ``SERVICE_ENV_PREFIXES``, the broker, database and JWT secret given, listening on 127.0.0.1, then
    ``settings`` by their names (upper-cased; a later one wins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_ENV_PREFIXES)}
    env.update(AMQP_URL=amqp_url, DATABASE_URL=database_url, JWT_SECRET=jwt_secret, HOST="127.0.0.1")
    env.update({key.upper(): str(value) for key, value in settings.items()})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str | None
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    async def start(self, *, timeout: float = 60.0) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        if self.ready_url is not None:
            await self.wait_ready(timeout=timeout)
        return self

    async def wait_ready(self, *, timeout: float = 60.0) -> None:
        """Wait until ``ready_url`` answers (200 or 503: up, ready or not); ``RuntimeError`` with the
        log's tail when the process exits first or ``timeout`` passes."""
        async with httpx.AsyncClient(timeout=2) as client:

            async def answers() -> bool:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
                response = await client.get(self.ready_url or "")
                return response.status_code in (200, 503)

            try:
                await eventually(answers, timeout=timeout, retry_on=(httpx.HTTPError,), what=f"{self.name} ready")
            except AssertionError as exc:
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}") from exc

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    async def wait_exit(self, timeout: float = 30.0) -> int | None:
        """The exit code once the process has exited, or None if it still runs after ``timeout``."""
        process = self.process
        if process is None:
            return None
        # polled, not Popen.wait in a thread: a cancelled wait would leave the thread blocking shutdown
        with contextlib.suppress(AssertionError):
            await eventually(lambda: process.poll() is not None, timeout=timeout, interval=0.05)
        return process.poll()

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        if await self.wait_exit(timeout) is None:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def command(name: str) -> list[str]:
    return [str(BIN / name)]
