"""The socket-level fuzz run at a small scale (``python -m tests.gateway.fuzz_gateway`` for a big one)."""

from __future__ import annotations

import json

from tests.gateway.fuzz_gateway import FUZZ_GATEWAY_ENV, fuzz
from tests.support.cluster import Cluster


async def test_fuzzed_gateway_survives_and_others_are_undisturbed(cluster: Cluster) -> None:
    await cluster.fake_openai(FAKE_OPENAI_FIRST_TOKEN_MS=0, FAKE_OPENAI_TOKENS_PER_SECOND=0)
    gateway = await cluster.gateway(**FUZZ_GATEWAY_ENV)
    await cluster.worker()
    report = await fuzz(
        gateway.extra["ws_url"],
        gateway.pid,
        frames=2000,
        concurrency=12,
        seconds=90,
        seed=20261127,
        log_path=gateway.log_path,
    )
    print(json.dumps(report.as_dict(), indent=2))
    assert report.problems == []
    assert sum(report.frames.values()) == 2000
    assert sum(report.connections.values()) > 200
    assert all(report.frames[kind] > 0 for kind in ("oversized", "invalid_utf8", "protocol_violation", "truncated"))
    assert report.errors["PAYLOAD_TOO_LARGE"] > 0
    assert report.errors["INVALID_MESSAGE"] > 0
    assert report.sentinel_pings > 100
    assert gateway.process is not None
    assert gateway.process.poll() is None
