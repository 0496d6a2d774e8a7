"""Gateways with small limits, shared by the tests of one module, and helpers to watch refusals."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.client import ChatClient
from tests.support.cluster import Cluster, isolated_cluster
from tests.support.services import Services


@pytest.fixture(scope="module")
async def module_cluster(services: Services, log_dir: Path) -> AsyncIterator[Cluster]:
    """Like ``cluster``, but shared by the tests of one module (their own vhost)."""
    async with isolated_cluster(services, log_dir) as own:
        yield own


def user(prefix: str) -> str:
    """A user id of its own: Redis state is shared between tests and runs."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def address() -> str:
    """A client address of its own, sent as X-Forwarded-For (uvicorn trusts it from 127.0.0.1)."""
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2]}"


async def connect(url: str, *, client_address: str | None = None, **kwargs: Any) -> ChatClient:
    headers = {"X-Forwarded-For": client_address or address()}
    return await ChatClient.connect(url, additional_headers=headers, **kwargs)


@dataclass
class Ending:
    """How a connection ended: the frames received before the close, and the close itself."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    code: int | None = None
    reason: str = ""
    at: float = 0.0

    @property
    def errors(self) -> list[str]:
        return [f["data"]["code"] for f in self.frames if f["type"] == "error"]


async def until_closed(client: ChatClient, timeout: float = 10) -> Ending:
    """Read until the server closes the connection (fails the test if it does not within ``timeout``)."""
    ending = Ending()
    deadline = time.monotonic() + timeout
    try:
        while True:
            ending.frames.append(await client.recv(max(0.01, deadline - time.monotonic())))
    except ConnectionClosed as closed:
        ending.at = time.time()
        if closed.rcvd is not None:
            ending.code, ending.reason = closed.rcvd.code, closed.rcvd.reason
    return ending


async def still_open(client: ChatClient) -> None:
    """The connection answers a ping, so it is open and served."""
    await client.send("ping", requestId="alive?")
    pong = await client.recv_type("pong", timeout=5)
    assert pong["requestId"] == "alive?"


async def refusals(http_url: str) -> dict[tuple[str, str], float]:
    """``chat_gateway_refusals_total`` of one gateway, by (code, reason)."""
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{http_url}/metrics")).text
    counts: dict[tuple[str, str], float] = {}
    pattern = r'^chat_gateway_refusals_total\{code="([^"]+)",reason="([^"]+)"\} (\S+)$'
    for match in re.finditer(pattern, text, re.MULTILINE):
        counts[(match[1], match[2])] = float(match[3])
    return counts


async def joined(url: str, token: str, **kwargs: Any) -> ChatClient:
    """A connected client that has joined a new chat."""
    client = await connect(url, **kwargs)
    frame = await client.join(token)
    assert frame["type"] == "chat_joined", frame
    return client
