"""The throughput baseline: a raw aio-pika request/reply loop on the same broker, no gateway, no worker.

Two processes, like the gateway and the worker: the requester publishes persistent requests with
publisher confirms to a quorum queue (the gateway's publish), the responder consumes them (manual
ack, prefetch like WORKER_CONCURRENCY) and answers each with ``--replies`` transient messages to the
requester's reply queue (start, chunks, end). A request is done when its last reply arrives.
No database, no WebSocket, no JSON parsing beyond what identifies the request.

Run: ``python -m bench.raw_amqp --concurrency 200 --duration 20 --replies 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bench.stack import AMQP_URL
from chat_common.process import run

PERSISTENT = os.environ.get("RAW_PERSISTENT", "1") == "1"
REQUESTS = "bench.raw.requests"
REPLIES = "bench.raw.replies"


def queue_name(queue_type: str) -> str:
    return f"{REQUESTS}.{queue_type}"


async def responder(replies: int, prefetch: int, queue_type: str) -> None:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    out = await connection.channel(publisher_confirms=False)
    queue = await channel.declare_queue(queue_name(queue_type), durable=True, arguments={"x-queue-type": queue_type})
    body = b"x" * 200

    async def on_request(message: AbstractIncomingMessage) -> None:
        for index in range(replies):
            await out.default_exchange.publish(
                aio_pika.Message(
                    body,
                    correlation_id=message.correlation_id,
                    headers={"seq": index, "last": index == replies - 1},
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=str(message.reply_to),
            )
        await message.ack()

    await queue.consume(on_request)
    print("ready", flush=True)
    await asyncio.Future()


async def requester(concurrency: int, duration: float, queue_type: str) -> dict[str, float]:
    connection = await aio_pika.connect_robust(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue_name(queue_type), durable=True, arguments={"x-queue-type": queue_type})
    reply_channel = await connection.channel(publisher_confirms=False)
    reply_queue = await reply_channel.declare_queue(
        f"{REPLIES}.{uuid.uuid4().hex[:8]}", exclusive=True, arguments={"x-message-ttl": 30_000}
    )
    waiting: dict[str, asyncio.Future[None]] = {}

    async def on_reply(message: AbstractIncomingMessage) -> None:
        if (message.headers or {}).get("last"):
            future = waiting.pop(str(message.correlation_id), None)
            if future is not None and not future.done():
                future.set_result(None)

    await reply_queue.consume(on_reply, no_ack=True)
    done, latencies = 0, []
    deadline = time.monotonic() + duration
    body = json.dumps({"request": "x" * 300}).encode()

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            correlation = uuid.uuid4().hex
            future = asyncio.get_running_loop().create_future()
            waiting[correlation] = future
            started = time.monotonic()
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    correlation_id=correlation,
                    reply_to=reply_queue.name,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    if PERSISTENT
                    else aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=queue_name(queue_type),
                mandatory=True,
            )
            await future
            latencies.append((time.monotonic() - started) * 1000)
            done += 1

    began = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    await connection.close()
    latencies.sort()
    return {
        "answered": done,
        "seconds": round(elapsed, 2),
        "per_minute": round(done / elapsed * 60, 1),
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else 0.0,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else 0.0,
    }


def measure(
    *, concurrency: int, duration: float, replies: int, prefetch: int, queue_type: str = "quorum"
) -> dict[str, float]:
    """Start the responder process, run the requester here, stop the responder; return the figures."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.raw_amqp",
            "--role",
            "responder",
            "--replies",
            str(replies),
            "--prefetch",
            str(prefetch),
            "--queue-type",
            queue_type,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()  # "ready"
        return run(requester(concurrency, duration, queue_type))
    finally:
        child.terminate()
        child.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--role", choices=["both", "responder"], default="both")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--replies", type=int, default=5)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    args = parser.parse_args()
    if args.role == "responder":
        run(responder(args.replies, args.prefetch, args.queue_type))
        return
    print(
        json.dumps(
            measure(concurrency=args.concurrency, duration=args.duration, replies=args.replies, prefetch=args.prefetch)
        )
    )


if __name__ == "__main__":
    main()
