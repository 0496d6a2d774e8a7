"""Overhead: at a fixed rate of answers with 20-chunk answers, time to first chunk and to the end
through the full stack vs the same fake model called directly inside a bare WebSocket endpoint.

Both sides run the worker's fake model with the same pacing (first token after
``--first-token-ms``, then ``--tokens`` tokens at ``--tps`` per second) and no coalescing
(CHUNK_COALESCE_MS=0: one chunk per token, so 20 chunks). The load is ``chat-loadtest`` in rate mode
from ``--generators`` processes: ``--rate`` answers per second spread over ``--users`` connections.
Only the answers completed within the measured window count (``--warmup`` seconds of load first,
then ``--duration``); CPU per answer of every process over the window. Median of the kept runs
(see ``bench.runs``); the last line on stdout is one JSON object.

Run: ``uv run python -m bench.overhead --runs 3 --duration 30``.
"""

from __future__ import annotations

import argparse
import functools
import operator
from typing import Any

from bench import runs
from bench import stack as s

KEYS = ("first_chunk_p50", "first_chunk_p99", "end_p50", "end_p99")


def model_env(args: argparse.Namespace) -> dict[str, object]:
    return {
        "FAKE_LLM_FIRST_TOKEN_MS": args.first_token_ms,
        "FAKE_LLM_TOKENS_PER_SECOND": args.tps,
        "FAKE_LLM_ANSWER_TOKENS": args.tokens,
        "CHUNK_COALESCE_MS": 0,
    }


def one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with s.stack() as running:
        if kind == "stack":
            # as the bare endpoint: no per-user rate limit, and every user may connect at once
            proc = running.gateway(
                WS_MAX_CONNECTIONS=args.users + 100,
                WS_RATE_LIMIT_MAX_MESSAGES=1_000_000,
                WS_MAX_UNAUTHENTICATED_SHARE=1,
            )
            running.worker(0, WORKER_CONCURRENCY=256, **model_env(args))
        else:
            proc = running.bare(s.BARE_PORT, **model_env(args))
        result = s.loadtest(
            "baseline", proc.port, "--users", args.users, "--chats", 1, "--rate", args.rate * 60,
            "--duration", args.duration, "--warmup", args.warmup, "--processes", args.generators, "--settle", 1,
            pid=proc.pid, tag=kind, cpu_groups=s.service_groups(running),
        )  # fmt: skip
    window, messages = result["window"], result["messages"]
    latency = window["latency_ms"]
    return {
        "answered_in_window": window["answered"],
        "answers_per_s": window["answers_per_s"],
        "first_chunk_p50": latency["first_chunk"]["p50"],
        "first_chunk_p99": latency["first_chunk"]["p99"],
        "end_p50": latency["end"]["p50"],
        "end_p99": latency["end"]["p99"],
        "cpu_us_per_answer": result["cpu_us_per_answer"],
        "answered": messages["answered"],
        "errors": messages["errors"],
        "incomplete": messages["incomplete"],
        "unfinished": messages["unfinished"],
        "chunks_per_answer": round(messages["chunks"] / max(1, messages["answered"]), 1),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    runs.add_options(parser, duration=30)
    parser.add_argument("--rate", type=float, default=50, help="answers per second")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--tps", type=float, default=100)
    parser.add_argument("--first-token-ms", type=int, default=100)
    return parser.parse_args()


def added(taken: runs.Runs, key: str) -> float | None:
    stack, bare = taken.median("stack", lambda r: r[key]), taken.median("bare", lambda r: r[key])
    return None if stack is None or bare is None else round(stack - bare, 1)


def main() -> None:
    args = parse_args()
    s.prepare()
    taken = runs.Runs.from_args(args)
    for index in range(args.runs):
        for kind in ("stack", "bare"):
            taken.take(kind, index, functools.partial(one, kind, args))
    medians = {kind: {key: taken.median(kind, operator.itemgetter(key)) for key in KEYS} for kind in ("stack", "bare")}
    print(f"\noverhead at {args.rate:g} answers/s, {args.tokens}-chunk answers, median of the kept runs")
    print(f"({s.MACHINE_NOTE}):")
    for kind in ("stack", "bare"):
        print(f"  {kind:6} " + "  ".join(f"{k} {s.fmt(medians[kind][k], ' ms')}" for k in KEYS))
    print("  added  " + "  ".join(f"{k} {s.fmt(added(taken, k), ' ms')}" for k in KEYS))
    print("  goal: added first_chunk_p99 <= 10 ms")
    path = s.save("overhead", {"args": vars(args), "runs": taken.by_kind, "medians": medians})
    print(f"  saved {path}  (load average now {runs.load_avg()})")
    runs.emit(
        {
            "added_first_chunk_p99_ms": added(taken, "first_chunk_p99"),
            "added_first_chunk_p50_ms": added(taken, "first_chunk_p50"),
            "added_end_p99_ms": added(taken, "end_p99"),
            "added_end_p50_ms": added(taken, "end_p50"),
            "stack_first_chunk_p99_ms": medians["stack"]["first_chunk_p99"],
            "bare_first_chunk_p99_ms": medians["bare"]["first_chunk_p99"],
            "stack_answers_per_s": taken.median("stack", lambda r: r["answers_per_s"]),
            "cpu_us_per_answer": taken.median_of_keys("stack", "cpu_us_per_answer"),
            "bare_cpu_us_per_answer": taken.median_of_keys("bare", "cpu_us_per_answer"),
            "rate_per_s": args.rate,
            "chunks": args.tokens,
            **taken.summary(),
        }
    )


if __name__ == "__main__":
    main()
