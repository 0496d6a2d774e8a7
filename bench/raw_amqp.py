"""The throughput reference: a raw aio-pika RPC loop on the same broker, no gateway, no worker, no database.

Processes like the gateway and the worker: each *requester* runs ``concurrency / requesters``
closed-loop callers, each publishing one durable (persistent) request with publisher confirms to a
durable queue (``--queue-type``: quorum, as the stack's request queues, or classic) and waiting for
its answer; each *responder* consumes the requests (manual ack, ``--prefetch`` like
WORKER_CONCURRENCY) and answers each with ``--replies`` transient messages (1 by default: the plain
RPC reference; 5 mirrors a coalesced answer's start, 3 chunks, end) to the requester's reply queue.
A request is done when its last reply arrives.

Fixed window: once every process has connected, the requesters get ``t0 = now + warmup`` and
``t1 = t0 + duration`` (CLOCK_MONOTONIC, shared by the processes of the box); only requests answered
within ``[t0, t1]`` count. CPU per request of the requesters, the responders and RabbitMQ over the
same window (``bench.cpu``).

Run: ``uv run python -m bench.raw_amqp --concurrency 200 --duration 20 --replies 1 --queue-type classic``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from bench import cpu
from bench.stack import AMQP_URL, percentiles, prepare
from chat_common.process import run

PERSISTENT = os.environ.get("RAW_PERSISTENT", "1") == "1"
REQUESTS = "bench.raw.requests"
REPLIES = "bench.raw.replies"


def queue_name(queue_type: str) -> str:
    # one queue per type: a queue cannot change its type, and declaring it with another fails
    return f"{REQUESTS}.{queue_type}"


async def responder(replies: int, prefetch: int, queue_type: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
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
                    headers={"last": index == replies - 1},
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                ),
                routing_key=str(message.reply_to),
            )
        await message.ack()

    await queue.consume(on_request)
    print("ready", flush=True)
    await asyncio.Future()


async def requester(callers: int, queue_type: str) -> dict[str, Any]:
    """Connect, say ``ready``, read ``go T0 T1`` from stdin, run the callers until ``T1``; return
    the requests answered in ``[T0, T1]`` and their latencies."""
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue_name(queue_type), durable=True, arguments={"x-queue-type": queue_type})
    reply_channel = await connection.channel(publisher_confirms=False)
    reply_queue = await reply_channel.declare_queue(f"{REPLIES}.{uuid.uuid4().hex[:8]}", exclusive=True)
    waiting: dict[str, asyncio.Future[None]] = {}

    async def on_reply(message: AbstractIncomingMessage) -> None:
        if (message.headers or {}).get("last"):
            future = waiting.pop(str(message.correlation_id), None)
            if future is not None and not future.done():
                future.set_result(None)

    await reply_queue.consume(on_reply, no_ack=True)
    print("ready", flush=True)
    _, t0, t1 = (await asyncio.to_thread(sys.stdin.readline)).split()
    start, end = float(t0), float(t1)
    latencies: list[float] = []
    body = json.dumps({"request": "x" * 300}).encode()
    mode = aio_pika.DeliveryMode.PERSISTENT if PERSISTENT else aio_pika.DeliveryMode.NOT_PERSISTENT

    async def caller() -> None:
        while time.monotonic() < end:
            correlation = uuid.uuid4().hex
            future = asyncio.get_running_loop().create_future()
            waiting[correlation] = future
            sent = time.monotonic()
            message = aio_pika.Message(body, correlation_id=correlation, reply_to=reply_queue.name, delivery_mode=mode)
            await channel.default_exchange.publish(message, routing_key=queue_name(queue_type), mandatory=True)
            await future
            done = time.monotonic()
            if start <= done <= end:
                latencies.append((done - sent) * 1000)

    await asyncio.gather(*(caller() for _ in range(callers)))
    await connection.close()
    return {"answered": len(latencies), "latencies_ms": latencies}


def _spawn(role: str, *args: object) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.raw_amqp", "--role", role, *map(str, args)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"raw loop {child.args!r} did not start (exit {child.poll()}): {line!r}")


def measure(
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    replies: int = 1,
    prefetch: int = 256,
    queue_type: str = "quorum",
    requesters: int = 1,
    responders: int = 1,
) -> dict[str, Any]:
    """Run the loop in child processes over a fixed window; return requests/s, latency and CPU."""
    answering = [
        _spawn("responder", "--replies", replies, "--prefetch", prefetch, "--queue-type", queue_type)
        for _ in range(responders)
    ]
    asking: list[subprocess.Popen[str]] = []
    folder = tempfile.mkdtemp(prefix="raw-loop-")
    try:
        for child in answering:
            _ready(child)
        shares = [concurrency // requesters + (i < concurrency % requesters) for i in range(requesters)]
        # each requester writes its figures to a file of its own: a line of over 64 KB on its stdout
        # pipe came out cut when the parent read one requester after the other
        results = [os.path.join(folder, f"requester-{index}.json") for index in range(len(shares))]
        asking = [
            _spawn("requester", "--concurrency", share, "--queue-type", queue_type, "--out", result)
            for share, result in zip(shares, results, strict=True)
        ]
        for child in asking:
            _ready(child)
        groups = {
            "requester": cpu.with_descendants(c.pid for c in asking),
            "responder": cpu.with_descendants(c.pid for c in answering),
            "rabbitmq": cpu.by_command("beam.smp"),
        }
        with cpu.CpuSampler(groups) as sampler:
            t0 = time.monotonic() + warmup
            t1 = t0 + duration
            for child in asking:
                assert child.stdin is not None
                child.stdin.write(f"go {t0} {t1}\n")
                child.stdin.flush()
            for child in asking:
                child.communicate(timeout=warmup + duration + 60)
        for child in asking:
            if child.returncode != 0:
                raise RuntimeError(f"raw requester exited {child.returncode}")
        outputs = [json.loads(Path(result).read_text(encoding="utf-8")) for result in results]
    finally:
        for child in [*asking, *answering]:
            if child.poll() is None:
                child.terminate()
                child.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
    latencies = [value for output in outputs for value in output["latencies_ms"]]
    rate = len(latencies) / duration
    return {
        "requests_per_s": round(rate, 1),
        "answered": len(latencies),
        "window_s": duration,
        **percentiles(latencies),
        "cpu_us_per_request": cpu.per_answer_us(sampler.window(t0, t1), rate),
        "queue_type": queue_type,
        "replies": replies,
    }


def add_loop_options(group: argparse._ActionsContainer) -> None:
    """The options of the loop's messages: replies per request, the request queue's type."""
    group.add_argument("--replies", type=int, default=1, help="replies per request (1: the plain RPC loop)")
    group.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum", help="the request queue's type")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--role", choices=["both", "responder", "requester"], default="both")
    parser.add_argument("--concurrency", type=int, default=200, help="closed-loop callers in all")
    parser.add_argument("--duration", type=float, default=20, help="seconds of the measured window")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before the window")
    add_loop_options(parser)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--requesters", type=int, default=1, help="requester processes")
    parser.add_argument("--responders", type=int, default=1, help="responder processes")
    parser.add_argument("--out", default="", help="(requester) the file its figures go to")
    args = parser.parse_args()
    if args.role == "responder":
        run(responder(args.replies, args.prefetch, args.queue_type))
        return
    if args.role == "requester":
        figures = run(requester(args.concurrency, args.queue_type))
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump(figures, out)
        return
    prepare()
    options = vars(args)  # every option but --role is one of measure's keywords, of the same name
    figures = measure(**{name: options[name] for name in inspect.signature(measure).parameters})
    figures["load_avg"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
