"""Overhead: at a fixed rate of answers with 20-chunk answers, time to first chunk and to the end
through the full stack vs the same fake model called directly inside a bare WebSocket endpoint.

Both sides run the worker's fake model with the same pacing (first token after
``--first-token-ms``, then ``--tokens`` tokens at ``--tps`` per second) and no coalescing
(CHUNK_COALESCE_MS=0: one chunk per token, so 20 chunks). The load is ``chat-loadtest`` in rate mode:
``--rate`` answers per minute spread over ``--users`` connections. Median of the runs.

Run: ``uv run python -m bench.overhead --runs 3 --duration 30``.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import stack as s


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
            proc = running.gateway(WS_MAX_CONNECTIONS=args.users + 100)
            running.worker(0, WORKER_CONCURRENCY=256, **model_env(args))
        else:
            proc = running.bare(**model_env(args))
        result = s.loadtest(
            "baseline", proc.port, "--users", args.users, "--chats", 1, "--rate", args.rate * 60,
            "--duration", args.duration, "--settle", 1,
            pid=proc.pid, tag=kind,
        )  # fmt: skip
    latency, messages = result["latency_ms"], result["messages"]
    return {
        "answered": messages["answered"],
        "errors": messages["errors"],
        "incomplete": messages["incomplete"],
        "chunks_per_answer": round(messages["chunks"] / max(1, messages["answered"]), 1),
        "first_chunk_p50": latency["first_chunk"]["p50"],
        "first_chunk_p99": latency["first_chunk"]["p99"],
        "end_p50": latency["end"]["p50"],
        "end_p99": latency["end"]["p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--rate", type=float, default=50, help="answers per second")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--tps", type=float, default=100)
    parser.add_argument("--first-token-ms", type=int, default=100)
    args = parser.parse_args()
    s.prepare()
    runs: dict[str, list[dict[str, Any]]] = {"stack": [], "bare": []}
    for index in range(args.runs):
        for kind in ("stack", "bare"):
            figures = one(kind, args)
            figures["load"] = s.load_note()
            runs[kind].append(figures)
            print(f"run {index + 1} {kind:5} {figures}", flush=True)
    keys = ("first_chunk_p50", "first_chunk_p99", "end_p50", "end_p99")
    medians = {kind: {k: s.median([r[k] for r in runs[kind]]) for k in keys} for kind in runs}
    added = {k: medians["stack"][k] - medians["bare"][k] for k in keys}
    print(
        f"\noverhead at {args.rate:g} answers/s, {args.tokens}-chunk answers, median of {args.runs} ({s.MACHINE_NOTE}):"
    )
    for kind in ("stack", "bare"):
        print(f"  {kind:6} " + "  ".join(f"{k} {medians[kind][k]:.1f} ms" for k in keys))
    print("  added  " + "  ".join(f"{k} {added[k]:+.1f} ms" for k in keys))
    print("  goal: added first_chunk_p99 <= 10 ms")
    path = s.save("overhead", {"args": vars(args), "runs": runs, "medians": medians, "added": added})
    print(f"  saved {path}")


if __name__ == "__main__":
    main()
