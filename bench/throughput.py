"""Throughput: ``burst`` (closed loop, fake model without delay) against the full stack, vs a raw
aio-pika request/reply loop on the same broker, in the same run.

Full stack: one gateway, ``--workers`` LLM workers, RabbitMQ, PostgreSQL persistence on (every
question and answer stored), rate limit lifted for the run. Two variants show what coalescing does:
``coalesced`` (the defaults, CHUNK_COALESCE_MS=50 / CHARS=256) and ``per-token`` (one chunk per model
token). The raw loop mirrors the broker traffic of one coalesced answer: a persistent confirmed
request to a quorum queue and ``--replies`` transient replies. Median of the runs.

Run: ``uv run python -m bench.throughput --runs 3 --duration 20``.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import raw_amqp
from bench import stack as s

FAST_MODEL = {"FAKE_LLM_FIRST_TOKEN_MS": 0, "FAKE_LLM_TOKENS_PER_SECOND": 0}
VARIANTS: dict[str, dict[str, object]] = {
    "coalesced": {},
    "per-token": {"CHUNK_COALESCE_CHARS": 1},
}


def stack_run(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    with s.stack() as running:
        gateway = running.gateway(
            WS_MAX_CONNECTIONS=args.users + 100,
            WS_RATE_LIMIT_MAX_MESSAGES=1_000_000,
            WS_MAX_CONNECTIONS_PER_USER=5,
        )
        for index in range(args.workers):
            running.worker(
                index,
                WORKER_CONCURRENCY=args.concurrency,
                FAKE_LLM_ANSWER_TOKENS=args.tokens,
                **FAST_MODEL,
                **VARIANTS[variant],
            )
        result = s.loadtest(
            "burst", gateway.port, "--users", args.users, "--duration", args.duration,
            "--processes", args.generators, "--settle", 1,
            pid=gateway.pid, tag=variant,
        )  # fmt: skip
    messages = result["messages"]
    return {
        "answered_per_minute": messages["answered_per_minute"],
        "answered": messages["answered"],
        "chunks_per_answer": messages["chunks"] / max(1, messages["answered"]),
        "errors": messages["errors"],
        "incomplete": messages["incomplete"],
        "end_p50_ms": result["latency_ms"]["end"]["p50"],
        "end_p99_ms": result["latency_ms"]["end"]["p99"],
        "gateway_rss_mb": (result["gateway"]["rss_peak_bytes"] or 0) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--users", type=int, default=200, help="closed-loop connections")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=256, help="WORKER_CONCURRENCY")
    parser.add_argument("--tokens", type=int, default=80, help="FAKE_LLM_ANSWER_TOKENS")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument("--replies", type=int, default=5, help="replies per request in the raw loop")
    parser.add_argument("--variants", default="coalesced,per-token,raw")
    args = parser.parse_args()
    s.prepare()
    wanted = args.variants.split(",")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
    for index in range(args.runs):
        for name in wanted:
            if name == "raw":
                figures: dict[str, Any] = dict(
                    raw_amqp.measure(
                        concurrency=args.users, duration=args.duration, replies=args.replies, prefetch=args.concurrency
                    )
                )
                figures["answered_per_minute"] = figures["per_minute"]
            else:
                figures = stack_run(name, args)
            figures["load"] = s.load_note()
            runs[name].append(figures)
            print(f"run {index + 1} {name:10} {figures}", flush=True)
    medians = {name: s.median([r["answered_per_minute"] for r in runs[name]]) for name in wanted}
    print(f"\nthroughput, answered messages per minute, median of {args.runs} ({s.MACHINE_NOTE}):")
    for name, value in medians.items():
        print(f"  {name:10} {value:>10,.0f}")
    if "raw" in medians and "coalesced" in medians:
        print(f"  full stack / raw loop: {medians['coalesced'] / medians['raw']:.2f}")
    if "per-token" in medians and "coalesced" in medians:
        print(f"  coalescing gains x{medians['coalesced'] / medians['per-token']:.2f}")
    print("  goal: >= 50,000 answered per minute")
    path = s.save("throughput", {"args": vars(args), "runs": runs, "medians": medians})
    print(f"  saved {path}")


if __name__ == "__main__":
    main()
