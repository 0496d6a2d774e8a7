"""Authentication configuration over real processes and sockets: what cannot work stops the gateway
at start-up naming the variable; keys come from a JWKS of the test's own, rotated mid-run."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.gateway.conftest import connect, until_closed, user
from tests.support.client import make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess, command
from tests.support.wait import eventually

DEV_SECRET = "dev-secret-change-me-in-production-0123456789"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        pytest.param({"JWT_ALGORITHMS": "hs256"}, "JWT_ALGORITHMS", id="lower-case"),
        pytest.param({"JWT_ALGORITHMS": "HS257"}, "JWT_ALGORITHMS", id="unknown"),
        pytest.param(
            {"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY": "-----BEGIN nothing"}, "JWT_PUBLIC_KEY", id="bad-key"
        ),
        pytest.param({"JWT_SECRET": DEV_SECRET}, "JWT_SECRET", id="published-secret"),
        pytest.param({"JWT_SECRET": "short-secret"}, "JWT_SECRET", id="short-secret"),
    ],
)
async def test_configuration_that_cannot_work_stops_the_gateway_naming_the_variable(
    module_cluster: Cluster, env: dict[str, str], named: str
) -> None:
    log = await failed_start(module_cluster, env)
    assert named in log, log
    assert "Traceback" not in log, log


async def failed_start(cluster: Cluster, env: dict[str, str]) -> str:
    """Start a gateway that must refuse to start; its log."""
    environment = cluster.base_env(GATEWAY_PORT=0, **env)
    environment.pop("ENVIRONMENT", None)
    process = ServiceProcess(
        "gateway-bad-config",
        command("chat-gateway"),
        environment,
        None,
        cluster.log_dir / f"gateway-bad-config-{uuid.uuid4().hex[:6]}.log",
    )
    cluster.processes.append(process)
    await process.start()
    code = await process.wait_exit(timeout=30)
    assert code not in (None, 0), process.log_tail()
    return process.log_tail()


async def test_the_development_secret_is_accepted_in_development(module_cluster: Cluster) -> None:
    gateway = await module_cluster.gateway(JWT_SECRET=DEV_SECRET, ENVIRONMENT="development")
    client = await connect(gateway.extra["ws_url"])
    async with client:
        joined = await client.join(make_token(user("dev"), secret=DEV_SECRET))
    assert joined["type"] == "chat_joined", joined


# ---------------------------------------------------------------------------------------------- JWKS


@dataclass
class JwksServer:
    """Serves ``keys`` as a JWKS over HTTP on a real socket and counts the fetches."""

    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    fetches: int = 0
    url: str = ""

    def document(self) -> bytes:
        jwks = []
        for kid, private in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            jwks.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return json.dumps({"keys": jwks}).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        self.fetches += 1
        body = self.document()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def jwks() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/.well-known/jwks.json"
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()


def signed(private: rsa.RSAPrivateKey, sub: str, kid: str | None, **claims: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    payload = {"sub": sub, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, private, algorithm="RS256", headers=headers)


async def outcome(url: str, token: str) -> str:
    """``chat_joined`` or the error code the gateway closed the connection with."""
    client = await connect(url)
    await client.send("join_chat", {"token": token, "chatType": "messages"})
    first = await client.recv()
    if first["type"] == "chat_joined":
        await client.close()
        return "chat_joined"
    ending = await until_closed(client)
    assert ending.code == 1008, (first, ending)
    return str(first["data"]["code"])


async def test_jwks_keys_are_fetched_cached_rotated_and_refreshed_at_a_bounded_rate(
    module_cluster: Cluster, jwks: JwksServer
) -> None:
    interval_s = 1.0
    old, new = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    jwks.keys = {"k-old": old}
    gateway = await module_cluster.gateway(
        JWT_ALGORITHMS="RS256",
        JWT_JWKS_URL=jwks.url,
        JWT_JWKS_REFRESH_INTERVAL=int(interval_s * 1000),
        JWT_JWKS_CACHE_TTL=600_000,
    )
    url = gateway.extra["ws_url"]
    assert await outcome(url, signed(old, user("jwks"), "k-old")) == "chat_joined"
    assert jwks.fetches == 1
    assert await outcome(url, signed(old, user("jwks"), "k-old")) == "chat_joined"  # another token, cached keys
    assert jwks.fetches == 1
    assert await outcome(url, signed(old, user("jwks"), None)) == "UNAUTHORIZED"  # kid required
    assert await outcome(url, make_token(user("jwks"))) == "UNAUTHORIZED"  # HS256 is not allowed here

    # the provider rotates: the old key is gone, the new one signs
    jwks.keys = {"k-new": new}
    # made-up kids cost at most one fetch per interval, however many tokens carry them
    before, started = jwks.fetches, time.monotonic()
    results = await asyncio.gather(*(outcome(url, signed(new, user("jwks"), f"bogus-{i}")) for i in range(20)))
    elapsed = time.monotonic() - started
    assert set(results) == {"UNAUTHORIZED"}
    assert jwks.fetches - before <= 1 + int(elapsed / interval_s), (jwks.fetches, before, elapsed)

    # a token with the new kid is accepted once the cooldown allows the refresh (bounded wait)
    await eventually(
        lambda: outcome(url, signed(new, user("jwks"), "k-new")),
        accept=lambda result: result == "chat_joined",
        timeout=10 * interval_s,
        interval=interval_s / 4,
        what="a token of the new key accepted",
    )
    # the refreshed set no longer has the old key: a fresh token signed with it is refused
    assert await outcome(url, signed(old, user("jwks"), "k-old", jti="after-rotation")) == "UNAUTHORIZED"
    assert jwks.fetches <= 2 + int((time.monotonic() - started) / interval_s) + 1


async def test_jwks_url_and_public_key_together_are_refused(module_cluster: Cluster) -> None:
    log = await failed_start(
        module_cluster, {"JWT_ALGORITHMS": "RS256", "JWT_JWKS_URL": "http://127.0.0.1:9/jwks", "JWT_PUBLIC_KEY": "x"}
    )
    assert "JWT_JWKS_URL" in log, log
