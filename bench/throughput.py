"""Throughput: ``burst`` (closed loop, fake model without delay) against the full stack, vs a raw
aio-pika RPC loop on the same broker, in the same run.

Full stack: ``--gateways`` gateways, ``--workers`` LLM workers, RabbitMQ, PostgreSQL persistence on
(every question and answer stored), rate limit lifted for the run; the load comes from
``--generators`` load-generator processes (so the load tool is not the limit), spread over the
gateways. Variants: ``coalesced`` (the defaults) and ``per-token`` (one chunk per model token, not run
unless asked for). The reference, ``raw``, is ``bench.raw_amqp`` with as many callers as users: one
persistent confirmed request into a durable queue, ``--replies`` replies (1: the plain RPC loop), one
requester process per gateway and one responder per worker.

Every run counts the answers completed within a fixed window (``--warmup`` seconds of load first,
then ``--duration`` seconds) and the CPU microseconds per answer of every process group over that
window. Median of the kept runs (see ``bench.runs``); the last line on stdout is one JSON object.

Run: ``uv run python -m bench.throughput --runs 3 --duration 20``.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from bench import raw_amqp, runs
from bench import stack as s

FAST_MODEL = {"FAKE_LLM_FIRST_TOKEN_MS": 0, "FAKE_LLM_TOKENS_PER_SECOND": 0}
VARIANTS: dict[str, dict[str, object]] = {
    "coalesced": {},
    "per-token": {"CHUNK_COALESCE_CHARS": 1},
}


def stack_run(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    with s.stack() as running:
        gateways = running.gateways(
            args.gateways,
            WS_MAX_CONNECTIONS=args.users + 100,
            WS_RATE_LIMIT_MAX_MESSAGES=1_000_000,
            WS_MAX_CONNECTIONS_PER_USER=5,
            # every user connects at once: with the default quarter of WS_MAX_CONNECTIONS for sockets
            # not yet authenticated, a run could be refused SERVER_AT_CAPACITY before it starts
            WS_MAX_UNAUTHENTICATED_SHARE=1,
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
            "burst", [g.port for g in gateways], "--users", args.users, "--duration", args.duration,
            "--warmup", args.warmup, "--processes", args.generators, "--settle", 1,
            pid=gateways[0].pid, tag=variant, cpu_groups=s.service_groups(running),
        )  # fmt: skip
    messages, window = result["messages"], result["window"]
    return {
        "answers_per_s": window["answers_per_s"],
        "answered_in_window": window["answered"],
        "answer_p50_ms": window["latency_ms"]["end"]["p50"],
        "answer_p99_ms": window["latency_ms"]["end"]["p99"],
        "cpu_us_per_answer": result["cpu_us_per_answer"],
        "chunks_per_answer": round(messages["chunks"] / max(1, messages["answered"]), 1),
        "answered": messages["answered"],
        "errors": messages["errors"],
        "incomplete": messages["incomplete"],
        "unfinished": messages["unfinished"],
        "gateway_rss_mb": round((result["gateway"]["rss_peak_bytes"] or 0) / 2**20, 1),
    }


def raw_run(args: argparse.Namespace) -> dict[str, Any]:
    return raw_amqp.measure(
        concurrency=args.users,
        duration=args.duration,
        warmup=args.warmup,
        replies=args.replies,
        prefetch=args.concurrency,
        queue_type=args.queue_type,
        requesters=args.gateways,
        responders=args.workers,
    )


def parse_args() -> argparse.Namespace:
    parser = runs.parser(__doc__, duration=20)
    parser.add_argument("--variants", default="coalesced,raw", help="of coalesced, per-token, raw")
    stack = parser.add_argument_group("the stack (and the raw loop's counterpart)")
    stack.add_argument("--gateways", type=int, default=1, help="gateway processes (raw: requester processes)")
    stack.add_argument("--workers", type=int, default=1, help="LLM worker processes (raw: responder processes)")
    stack.add_argument("--concurrency", type=int, default=256, help="WORKER_CONCURRENCY (raw: prefetch)")
    stack.add_argument("--tokens", type=int, default=80, help="FAKE_LLM_ANSWER_TOKENS")
    load = parser.add_argument_group("the load")
    load.add_argument("--users", type=int, default=200, help="closed-loop connections (raw: callers)")
    load.add_argument("--generators", type=int, default=2, help="load generator processes")
    raw_amqp.add_loop_options(parser.add_argument_group("the raw loop only"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    s.prepare()
    wanted = args.variants.split(",")
    taken = runs.Runs.from_args(args)
    for index in range(args.runs):
        for name in wanted:
            measure = functools.partial(raw_run, args) if name == "raw" else functools.partial(stack_run, name, args)
            taken.take(name, index, measure)
    stack_rate = taken.median("coalesced", lambda run: run["answers_per_s"])
    raw_rate = taken.median("raw", lambda run: run["requests_per_s"])
    shape = f"{args.gateways} gateway(s) x {args.workers} worker(s), {args.generators} generators"
    print(f"\nthroughput, median of the kept runs, {shape} ({s.MACHINE_NOTE}):")
    print(f"  full stack (coalesced) {s.fmt(stack_rate, ' answers/s')}")
    if "per-token" in wanted:
        print(
            f"  full stack (per-token) {s.fmt(taken.median('per-token', lambda run: run['answers_per_s']))} answers/s"
        )
    print(f"  raw RPC loop           {s.fmt(raw_rate, ' req/s')} ({args.queue_type} queue, {args.replies} replies)")
    print(f"  ratio {s.fmt(runs.ratio(stack_rate, raw_rate), digits=3)} (goals: >= 833 answers/s, ratio >= 0.6)")
    path = s.save("throughput", {"args": vars(args), "runs": taken.by_kind})
    print(f"  saved {path}  (load average now {runs.load_avg()})")
    runs.emit(
        {
            "answers_per_s": stack_rate,
            "raw_rpc_per_s": raw_rate,
            "ratio": runs.ratio(stack_rate, raw_rate),
            "cpu_us_per_answer": taken.median_of_keys("coalesced", "cpu_us_per_answer"),
            "raw_cpu_us_per_request": taken.median_of_keys("raw", "cpu_us_per_request"),
            "answer_p50_ms": taken.median("coalesced", lambda run: run["answer_p50_ms"]),
            "answer_p99_ms": taken.median("coalesced", lambda run: run["answer_p99_ms"]),
            "per_token_answers_per_s": taken.median("per-token", lambda run: run["answers_per_s"]),
            "gateways": args.gateways,
            "workers": args.workers,
            "generators": args.generators,
            "users": args.users,
            "raw_queue_type": args.queue_type,
            "raw_replies": args.replies,
            **taken.summary(),
        }
    )


if __name__ == "__main__":
    main()
