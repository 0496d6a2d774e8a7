"""Sizing probe for the README's scaling rules of thumb: one gateway, one worker, a paced fake LLM.

    uv run python deploy/sizing.py --connections 1000 --requests 192 --clients 64

Starts a fake OpenAI server (paced like a real model), one gateway and one worker against the local
RabbitMQ/PostgreSQL (a vhost and database of its own, dropped at the end), then measures:

1. memory per idle authenticated connection: the gateway's RSS before and after ``--connections``
   clients have joined a chat;
2. answers per second of one worker process at that LLM latency, and the CPU time the gateway and
   the worker spend per answer (from /proc), with ``--clients`` clients asking in parallel.

Modest by design (the machine is shared): it prints figures, it asserts nothing. For full load
scenarios use the load tool of the bench/ folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.services import Services, drop_database, drop_vhost, make_database, make_vhost

from chat_common.process import raise_nofile_limit

TICKS = os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def open_idle(url: str, count: int, run: str) -> list[ChatClient]:
    clients: list[ChatClient] = []

    async def one(index: int) -> ChatClient:
        client = await ChatClient.connect(url)
        joined = await client.join(make_token(f"sizing-{run}-idle-{index}"), "messages")
        assert joined["type"] == "chat_joined", joined
        return client

    for start in range(0, count, 100):
        clients += await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))
    return clients


async def ask_many(url: str, clients: int, requests: int, run: str) -> tuple[list[float], dict[str, int]]:
    """Latencies of the answers, and the error codes met (BUSY is retried after retryAfterMs)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)

    async def asker(index: int) -> None:
        async with await ChatClient.connect(url) as client:
            await client.join(make_token(f"sizing-{run}-ask-{index}"), "messages")
            while not queue.empty():
                number = queue.get_nowait()
                started = time.perf_counter()
                answer = await client.ask(f"Sizing question {number}: what is a tort?", timeout=120)
                if answer.end is not None:
                    latencies.append(time.perf_counter() - started)
                    continue
                code = str((answer.error or {}).get("code"))
                errors[code] = errors.get(code, 0) + 1
                if code == "BUSY":
                    queue.put_nowait(number)
                    await asyncio.sleep((answer.error or {}).get("retryAfterMs", 1000) / 1000)

    await asyncio.gather(*(asker(i) for i in range(clients)))
    return latencies, errors


async def measure(args: argparse.Namespace) -> dict[str, object]:
    run = os.urandom(3).hex()
    amqp_url, vhost = make_vhost(os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/"))
    base_db = os.environ.get("DATABASE_URL", "postgresql://postgres@localhost:5432/postgres")
    database_url, database = await make_database(base_db)
    services = Services(amqp_url=amqp_url, database_url=database_url, redis_url="", vhost=vhost, database=database)
    cluster = Cluster(services, Path(tempfile.mkdtemp(prefix="sizing-")))
    try:
        await cluster.fake_openai(
            FAKE_OPENAI_FIRST_TOKEN_MS=args.first_token_ms,
            FAKE_OPENAI_TOKENS_PER_SECOND=args.tokens_per_second,
            FAKE_OPENAI_ANSWER_TOKENS=args.answer_tokens,
        )
        limits = {"WS_MAX_CONNECTIONS": args.connections + args.clients + 100, "WS_RATE_LIMIT_MAX_MESSAGES": 10_000}
        gateway = await cluster.gateway(LOG_LEVEL="WARNING", **limits)
        worker = await cluster.worker(LOG_LEVEL="WARNING", WORKER_CONCURRENCY=args.worker_concurrency)
        url = gateway.extra["ws_url"]
        await asyncio.sleep(1)

        rss_before = rss_kb(gateway.pid)
        idle = await open_idle(url, args.connections, run)
        await asyncio.sleep(2)
        rss_after = rss_kb(gateway.pid)

        gateway_cpu, worker_cpu = cpu_s(gateway.pid), cpu_s(worker.pid)
        started = time.perf_counter()
        latencies, errors = await ask_many(url, args.clients, args.requests, run)
        elapsed = time.perf_counter() - started
        gateway_cpu, worker_cpu = cpu_s(gateway.pid) - gateway_cpu, cpu_s(worker.pid) - worker_cpu
        for client in idle:
            await client.close()
    finally:
        await cluster.stop_all()
        await drop_database(base_db, database)
        drop_vhost(vhost)

    answer_s = args.first_token_ms / 1000 + args.answer_tokens / args.tokens_per_second
    latencies.sort()
    return {
        "idle_connections": args.connections,
        "gateway_rss_mb_before": round(rss_before / 1024, 1),
        "gateway_rss_mb_after": round(rss_after / 1024, 1),
        "kb_per_idle_connection": round((rss_after - rss_before) / args.connections, 1),
        "llm": f"first token {args.first_token_ms} ms, {args.answer_tokens} tokens at {args.tokens_per_second}/s",
        "llm_answer_s": round(answer_s, 2),
        "worker_concurrency": args.worker_concurrency,
        "clients": args.clients,
        "answers": len(latencies),
        "errors": errors,
        "load_average_1m": round(os.getloadavg()[0], 1),
        "elapsed_s": round(elapsed, 1),
        "answers_per_s": round(len(latencies) / elapsed, 2),
        "answers_per_min": round(60 * len(latencies) / elapsed),
        "ceiling_per_s": round(args.worker_concurrency / answer_s, 2),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "gateway_cpu_ms_per_answer": round(1000 * gateway_cpu / len(latencies), 1),
        "worker_cpu_ms_per_answer": round(1000 * worker_cpu / len(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="idle authenticated connections")
    parser.add_argument("--requests", type=int, default=192, help="answers to generate")
    parser.add_argument("--clients", type=int, default=64, help="clients asking in parallel")
    parser.add_argument("--worker-concurrency", type=int, default=32)
    parser.add_argument("--first-token-ms", type=int, default=500)
    parser.add_argument("--tokens-per-second", type=float, default=50.0)
    parser.add_argument("--answer-tokens", type=int, default=100)
    args = parser.parse_args()
    raise_nofile_limit()
    print(json.dumps(asyncio.run(measure(args)), indent=2))


if __name__ == "__main__":
    main()
